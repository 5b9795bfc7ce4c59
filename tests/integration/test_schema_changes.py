"""Schema changes at a site while it streams: the cloud table follows, or the sink stops by name."""

from __future__ import annotations

from typing import Callable

import psycopg
import pytest

from devenv.pipeline import Daemon, cloud_config, count, execute, rows_of, sync, wait_until
from tests.integration.sites import SEED, TIMEOUT, Pipeline

AFTER = ["UPDATE devices SET id = id + 1000 WHERE id < 5",
         "INSERT INTO devices (id, name) VALUES (77, 'x')"]


@pytest.mark.parametrize("ddl, columns, cloud_type", [
    ("ALTER TABLE devices ADD COLUMN serial text", ["id", "name", "serial"], ("serial", "text")),
    ("ALTER TABLE devices DROP COLUMN firmware", ["id", "name"], None),
    ("ALTER TABLE devices ALTER COLUMN id TYPE bigint", ["id", "name"], ("id", "bigint")),
    ("ALTER TABLE devices ALTER COLUMN firmware TYPE varchar(40);"
     " ALTER TABLE devices ALTER COLUMN firmware TYPE varchar(80)", ["id", "firmware"],
     ("firmware", "text")),  # the cloud's text already holds any varchar
    ("ALTER TABLE devices RENAME COLUMN firmware TO fw", ["id", "name", "fw"], ("fw", "text")),
    # the source usually reads the middle version after the rename: no attnum for "firmware"
    ("ALTER TABLE devices ADD COLUMN z int; UPDATE devices SET z = 1 WHERE id = 9;"
     " ALTER TABLE devices RENAME COLUMN firmware TO fw", ["id", "fw", "z"], ("fw", "text")),
    # older rows read the default at the site: the cloud's older rows of the site get it too
    ("ALTER TABLE devices ADD COLUMN region text DEFAULT 'eu'", ["id", "name", "region"],
     ("region", "text")),
    ("ALTER TABLE devices DROP COLUMN firmware; ALTER TABLE devices ADD COLUMN firmware text"
     " DEFAULT 'new'", ["id", "firmware"], ("firmware", "text")),
    ("ALTER TABLE devices ADD COLUMN price numeric(6,2) DEFAULT 1.5;"
     " UPDATE devices SET price = 2.25 WHERE id = 7;"
     " ALTER TABLE devices ALTER COLUMN price TYPE numeric(10,2)", ["id", "price"],
     ("price", "numeric(10,2)")),
])
def test_cloud_table_follows(pipeline_factory: Callable[..., Pipeline], ddl: str,
                             columns: list[str], cloud_type: tuple[str, str] | None) -> None:
    p = pipeline_factory(sites=("a",)).start()
    a = p.site_dsn["a"]
    execute(a, SEED[0])
    p.sync("a")
    execute(a, *ddl.split(";"), *AFTER)
    p.sync("a")
    assert rows_of(p.cloud_dsn, "public.devices", columns, where_site="a") == \
        rows_of(a, "public.devices", columns)
    if cloud_type is not None:
        with psycopg.connect(p.cloud_dsn) as conn:
            got = conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid ="
                " 'public.devices'::regclass AND attname = %s", (cloud_type[0],)).fetchone()
        assert got == (cloud_type[1],)
    p.stop()


def test_incompatible_type_change_stops_that_site_and_the_others_flow(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a", "b")).start()
    a, b = p.site_dsn["a"], p.site_dsn["b"]
    execute(a, SEED[0])
    execute(b, SEED[0])
    p.sync("a")
    p.sync("b")
    before = rows_of(b, "public.devices", ["id", "name", "firmware"])
    execute(b, "ALTER TABLE devices ALTER COLUMN firmware TYPE integer USING 1", *AFTER)
    wait_until(lambda: "site b stopped" in p.sink.log(), TIMEOUT, "the sink to stop site b",
               p.daemons)
    log = p.sink.log()
    assert "column firmware is text" in log and "the site's integer" in log, log
    execute(a, *AFTER)  # site a keeps flowing
    p.sync("a")
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "name", "firmware"], where_site="a") == \
        rows_of(a, "public.devices", ["id", "name", "firmware"])
    # nothing of site b after the refused change was applied, nothing before it was lost
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "name", "firmware"], where_site="b") == before
    # cdc status shows it: site b stopped with the reason, site a applying; exit 1
    import json

    from tests.integration.test_operations import cdc
    code, out, err = cdc("status", "--config", str(p.sink.config), "--json")
    lines = {x["site"]: x for x in json.loads(out)}
    assert code == 1 and lines["a"]["state"] == "applying", (out, err)
    assert lines["b"]["state"] == "stopped" and "firmware" in lines["b"]["error"], lines["b"]
    p.stop()


def test_a_rename_at_one_site_renames_the_cloud_column_and_the_other_sites_follow_it(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a", "b")).start()
    a, b = p.site_dsn["a"], p.site_dsn["b"]
    p.seed(SEED[0])
    execute(a, "ALTER TABLE devices RENAME COLUMN firmware TO fw",
            "UPDATE devices SET fw = 'v2' WHERE id <= 3")
    p.sync("a")
    execute(b, "UPDATE devices SET firmware = 'b2' WHERE id >= 18",
            "INSERT INTO devices (id, name, firmware) VALUES (99, 'late', 'b3')")
    p.sync("b")
    with psycopg.connect(p.cloud_dsn) as conn:
        cols = {r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'public.devices'::regclass"
            " AND attnum > 0 AND NOT attisdropped").fetchall()}
    assert "fw" in cols and "firmware" not in cols
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "fw"], where_site="a") == \
        rows_of(a, "public.devices", ["id", "fw"])
    # site b still calls it firmware: its values land in the renamed column
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "fw"], where_site="b") == \
        rows_of(b, "public.devices", ["id", "firmware"])
    p.stop()


def in_publication(dsn: str, table: str) -> bool:
    return count(dsn, "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'tributary'"
                      " AND schemaname || '.' || tablename = %s", (table,)) == 1


def test_tables_created_while_streaming_join_when_they_can_be_replicated(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",)).start()
    a = p.site_dsn["a"]
    execute(a, "CREATE TABLE events (id int PRIMARY KEY, v text)",
            "CREATE TABLE loose (v int, w text)")
    wait_until(lambda: in_publication(a, "public.events"), TIMEOUT, "events in the publication",
               p.daemons)
    execute(a, "INSERT INTO events SELECT g, 'e' || g FROM generate_series(1, 50) g",
            "UPDATE events SET v = 'changed' WHERE id < 10", "DELETE FROM events WHERE id > 40")
    # no usable identity: named with what to run, and kept out of the publication, so the site's
    # own updates of it keep working
    wait_until(lambda: "table not replicated: public.loose" in p.sources["a"].log(), TIMEOUT,
               "the source to name public.loose", p.daemons)
    assert "REPLICA IDENTITY FULL" in p.sources["a"].log()
    execute(a, "INSERT INTO loose VALUES (1, 'x')", "UPDATE loose SET w = 'y'")
    assert not in_publication(a, "public.loose")
    execute(a, "ALTER TABLE loose REPLICA IDENTITY FULL")
    wait_until(lambda: in_publication(a, "public.loose"), TIMEOUT, "loose in the publication",
               p.daemons)
    execute(a, "INSERT INTO loose VALUES (2, NULL), (3, 'z')", "UPDATE loose SET w = 'zz'"
            " WHERE v = 3", "DELETE FROM loose WHERE v = 2")
    p.sync("a")
    assert rows_of(p.cloud_dsn, "public.events", ["id", "v"], where_site="a") == \
        rows_of(a, "public.events", ["id", "v"])
    # rows written before the table joined are copied by its backfill snapshot
    assert rows_of(p.cloud_dsn, "public.loose", ["v", "w"], where_site="a") == \
        rows_of(a, "public.loose", ["v", "w"]) == [("1", "y"), ("3", "zz")]
    p.stop()


def test_a_table_dropped_and_created_again_replaces_the_sites_rows(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a", "b")).start()
    a, b = p.site_dsn["a"], p.site_dsn["b"]
    p.seed(SEED[0])
    execute(a, "DROP TABLE devices", "CREATE TABLE devices (id bigint PRIMARY KEY, name text)")
    wait_until(lambda: in_publication(a, "public.devices"), TIMEOUT, "devices in the publication",
               p.daemons)
    execute(a, "INSERT INTO devices VALUES (5, 'new five'), (500, 'five hundred')")
    p.sync("a")
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "name"], where_site="a") == \
        rows_of(a, "public.devices", ["id", "name"])
    # the other site's rows are untouched
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "name"], where_site="b") == \
        rows_of(b, "public.devices", ["id", "name"])
    p.stop()


def test_a_table_excluded_from_the_config_leaves_the_publication(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",)).start()
    a = p.site_dsn["a"]
    execute(a, SEED[0], SEED[3])
    p.sync("a")
    source = p.sources["a"]
    assert source.stop() == 0
    text = source.config.read_text()
    source.config.write_text(text.replace('tables = ["public.*"]',
                                          'tables = ["public.*"]\nexclude = ["public.tags"]'))
    source.start()
    wait_until(lambda: not in_publication(a, "public.tags"), TIMEOUT, "tags out of the publication",
               p.daemons)
    execute(a, "UPDATE tags SET note = 'site only'", "UPDATE devices SET name = 'renamed'")
    p.sync("a")
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "name"], where_site="a") == \
        rows_of(a, "public.devices", ["id", "name"])
    assert {r[0] for r in rows_of(p.cloud_dsn, "public.tags", ["note"], where_site="a")} == {None}
    p.stop()


def test_a_new_cloud_replays_the_topic_through_every_schema_version(
        pipeline_factory: Callable[..., Pipeline], unique_name: Callable[[str], str]) -> None:
    p = pipeline_factory(sites=("a",)).start()
    a = p.site_dsn["a"]
    execute(a, SEED[0])
    p.sync("a")
    # each change is read by the source before the next (as when it keeps up): the catalog
    # facts it adds (attnum, the default older rows read) are those of that moment
    for step in [("ALTER TABLE devices ADD COLUMN region text DEFAULT 'eu'",
                  "UPDATE devices SET region = 'us' WHERE id = 1"),
                 ("ALTER TABLE devices RENAME COLUMN firmware TO fw",
                  "UPDATE devices SET fw = 'v9' WHERE id <= 3"),
                 ("ALTER TABLE devices ALTER COLUMN id TYPE bigint",
                  "INSERT INTO devices (id, name, region) VALUES (5000000000, 'big', 'ap')"),
                 ("ALTER TABLE devices DROP COLUMN installed", "DELETE FROM devices WHERE id = 7")]:
        execute(a, *step)
        p.sync("a")
    columns = ["id", "name", "fw", "region"]
    assert rows_of(p.cloud_dsn, "public.devices", columns, where_site="a") == \
        rows_of(a, "public.devices", columns)
    # a second cloud, empty, reads the topic from its start: every past version is readable
    replay_dsn = p.clusters["cloud"].create_database(unique_name("replay"))
    cfg = cloud_config(p.tmp / "replay.toml", replay_dsn, p.kafka, p.prefix, unique_name("g"))
    replay = Daemon("sink", cfg, p.tmp, "replay-sink").start()
    try:
        sync(a, replay_dsn, "a", TIMEOUT, (replay,))
        assert rows_of(replay_dsn, "public.devices", columns, where_site="a") == \
            rows_of(a, "public.devices", columns)
    finally:
        assert replay.stop() == 0
    p.stop()
