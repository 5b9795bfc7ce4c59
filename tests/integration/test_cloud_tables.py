"""Cloud tables: renamed by [sink.tables], refused by name when they cannot hold a site's rows."""

from __future__ import annotations

from typing import Callable

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
