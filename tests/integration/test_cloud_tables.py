"""Cloud tables: renamed by [sink.tables], refused by name when they cannot hold a site's rows."""

from __future__ import annotations

import subprocess
import sys
from typing import Callable

import psycopg

from devenv.pipeline import REPO, count, execute, rows_of, sync, wait_until
from tests.integration.sites import SEED, TABLES, TIMEOUT, Pipeline


def test_sink_tables_mapping_renames(pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",), sink_extra='[sink.tables]\n"public.readings" = "telemetry.site_readings"')
    p.start()
    execute(p.site_dsn["a"], *SEED)
    p.sync("a")
    columns = TABLES["public.readings"]
    assert rows_of(p.cloud_dsn, "telemetry.site_readings", columns, where_site="a") == \
        rows_of(p.site_dsn["a"], "public.readings", columns)
    assert count(p.cloud_dsn, "SELECT count(*) FROM pg_tables WHERE tablename = 'readings'") == 0
    p.stop()


def test_cloud_column_too_narrow_stops_the_site_naming_table_and_column(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",))
    execute(p.cloud_dsn,
            "CREATE TABLE readings (site_id text, device_id int, ts timestamptz, value integer,"
            " quality smallint, PRIMARY KEY (site_id, device_id, ts))")
    p.start()
    execute(p.site_dsn["a"], SEED[0], SEED[1])
    wait_until(lambda: "site a stopped" in p.sink.log(), TIMEOUT,
               "the sink to stop site a on the narrow column", p.daemons)
    log = p.sink.log()
    assert "cloud table public.readings" in log and "column value is integer" in log \
        and "double precision" in log, log
    assert count(p.cloud_dsn, "SELECT count(*) FROM readings") == 0  # nothing half-applied
    p.stop()


def test_cloud_table_without_site_key_is_refused(pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",))
    execute(p.cloud_dsn, "CREATE TABLE devices (site_id text, id int PRIMARY KEY, name text,"
                         " firmware text, installed date, updated_at timestamptz)")
    p.start()
    execute(p.site_dsn["a"], SEED[0])
    wait_until(lambda: "site a stopped" in p.sink.log(), TIMEOUT,
               "the sink to refuse the cloud table", p.daemons)
    assert "no primary key or unique index on (site_id, id)" in p.sink.log()
    p.stop()  # the sink itself goes on (other sites would flow) and stops cleanly


def test_append_tables_never_rewrite_a_row_on_replay_but_take_updates(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",),
                         sink_extra='table_modes = { "public.readings" = "append" }').start()
    a = p.site_dsn["a"]
    execute(a, SEED[1])
    p.sync("a")
    xmins = "SELECT xmin::text, device_id, ts FROM public.readings ORDER BY device_id, ts"
    with psycopg.connect(p.cloud_dsn) as conn:
        before = conn.execute(xmins).fetchall()
    # the sink forgets where it was and reads the topic again: every insert meets its row
    assert p.sink.stop() == 0
    execute(p.cloud_dsn, "DELETE FROM tributary.offsets", "DELETE FROM tributary.sites")
    p.sink.start()
    execute(a, "UPDATE readings SET value = -1 WHERE device_id = 3")
    p.sync("a")
    with psycopg.connect(p.cloud_dsn) as conn:
        after = conn.execute(xmins).fetchall()
    unchanged = [r for r in after if r[1] != 3]
    assert unchanged == [r for r in before if r[1] != 3]  # same xmin: not rewritten
    assert rows_of(p.cloud_dsn, "public.readings", ["device_id", "ts", "value"], where_site="a") \
        == rows_of(a, "public.readings", ["device_id", "ts", "value"])  # the update arrived
    p.stop()


FK_SITE = [
    "CREATE TABLE parent (id int PRIMARY KEY, name text)",
    "CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent (id)"
    " ON DELETE CASCADE ON UPDATE CASCADE, v text)",
]
# the operator declares the cloud tables and their foreign key on (site_id, key), deferred to
# commit: the sink applies whole site transactions, so it holds at every cloud commit
FK_CLOUD = [
    "CREATE TABLE parent (site_id text, id int, name text, PRIMARY KEY (site_id, id))",
    "CREATE TABLE child (site_id text, id int, parent_id int NOT NULL, v text,"
    " PRIMARY KEY (site_id, id), FOREIGN KEY (site_id, parent_id) REFERENCES parent"
    " (site_id, id) DEFERRABLE INITIALLY DEFERRED)",
]


def test_cloud_foreign_keys_on_site_and_key_hold_at_every_commit(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a", "b"))
    for site in ("a", "b"):
        execute(p.site_dsn[site], *FK_SITE)
    execute(p.cloud_dsn, *FK_CLOUD)
    p.start()
    for site in ("a", "b"):  # the same keys at both sites
        execute(p.site_dsn[site],
                "INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 50) g",
                "INSERT INTO child SELECT g, 1 + g % 50, 'c' || g FROM generate_series(1, 200) g")
    a = p.site_dsn["a"]
    execute(a, "DELETE FROM parent WHERE id <= 10",  # cascades to children at the site
            "UPDATE parent SET id = id + 1000 WHERE id BETWEEN 11 AND 15",  # cascades too
            "BEGIN", "INSERT INTO parent VALUES (2000, 'late')",
            "UPDATE child SET parent_id = 2000 WHERE id % 7 = 0", "COMMIT")
    for site in ("a", "b"):
        p.sync(site)
        for table, cols in [("public.parent", ["id", "name"]),
                            ("public.child", ["id", "parent_id", "v"])]:
            assert rows_of(p.cloud_dsn, table, cols, where_site=site) == \
                rows_of(p.site_dsn[site], table, cols), (site, table)
    assert "stopped" not in p.sink.log()
    with psycopg.connect(p.cloud_dsn) as conn:  # every child row has its parent, per site
        orphans = conn.execute("SELECT count(*) FROM child c LEFT JOIN parent p ON"
                               " (p.site_id, p.id) = (c.site_id, c.parent_id)"
                               " WHERE p.id IS NULL").fetchone()
    assert orphans == (0,)
    p.stop()


def test_remove_site_deletes_its_rows_everywhere_and_leaves_the_others(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a", "b")).start()
    p.seed(*SEED)
    assert p.sources["a"].stop() == 0
    assert p.sink.stop() == 0
    done = subprocess.run([sys.executable, "-m", "cdc.cli", "sink", "remove-site", "a", "--yes",
                           "--config", str(p.sink.config)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "site a removed from the cloud (5 table(s))" in done.stdout, done.stdout
    for table, columns in TABLES.items():
        assert rows_of(p.cloud_dsn, table, columns, where_site="a") == [], table
        assert rows_of(p.cloud_dsn, table, columns, where_site="b") == \
            rows_of(p.site_dsn["b"], table, columns), table
    assert count(p.cloud_dsn, "SELECT count(*) FROM tributary.sites WHERE site_id = 'a'") == 0
    p.sink.start()  # the other site keeps flowing
    execute(p.site_dsn["b"], "UPDATE devices SET name = 'still here' WHERE id = 1")
    sync(p.site_dsn["b"], p.cloud_dsn, "b", TIMEOUT, (p.sources["b"], p.sink))
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "name"], where_site="b") == \
        rows_of(p.site_dsn["b"], "public.devices", ["id", "name"])


def test_two_site_tables_in_one_cloud_table_stop_the_site_not_delete_each_other(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    """``public.extra`` is mapped onto ``public.devices``, where the site's own devices table
    lands too: refused by name, before either deletes the other's rows."""
    p = pipeline_factory(sites=("a",), sink_extra='tables = { "public.extra" = "public.devices" }')
    a = p.site_dsn["a"]
    execute(a, "CREATE TABLE extra (id int PRIMARY KEY, name text NOT NULL, firmware text,"
               " installed date, updated_at timestamptz)")
    p.start()
    execute(a, "INSERT INTO devices (id, name) VALUES (1, 'device')")
    p.sync("a")
    execute(a, "INSERT INTO extra (id, name) VALUES (2, 'extra')")
    wait_until(lambda: "site a stopped" in p.sink.log(), TIMEOUT, "the sink to refuse it",
               p.daemons)
    assert "site tables public.devices and public.extra both land in cloud table " \
           "public.devices" in p.sink.log()
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "name"], where_site="a") == \
        [("1", "device")]
    p.stop()
