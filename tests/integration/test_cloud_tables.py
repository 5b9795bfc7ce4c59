"""Cloud tables: renamed by [sink.tables], refused by name when they cannot hold a site's rows."""

from __future__ import annotations

from typing import Callable

import psycopg

from devenv.pipeline import count, execute, rows_of, wait_until
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
