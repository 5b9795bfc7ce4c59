"""A live TimescaleDB site through the whole pipeline: the fixture's workload (hypertable,
compression, changes to compressed rows, decompression) run at a real TimescaleDB site while the
source streams; the cloud (TimescaleDB too) must equal the site, with the hypertable made a
hypertable on the same time column and chunk interval.

TimescaleDB is in no package registry reachable here, so CI skips this test; it runs wherever the
extension is installed (README: how it was checked by hand, and on which versions).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devenv.pipeline import (MARKER_DDL, Daemon, cloud_config, count, execute, rows_of,
                             site_config, sync, wait_until)
from tests.integration.sites import TIMEOUT
from tests.unit.test_timescale import FIXTURE

TIMESCALEDB = Path("/usr/share/postgresql/15/extension/timescaledb.control")


def workload() -> tuple[list[str], list[str]]:
    """(before the source starts, while it streams) from the fixture's workload.sql."""
    text = "\n".join(line for line in (FIXTURE / "workload.sql").read_text().splitlines()
                     if not line.startswith("--"))
    statements = [s.strip() for s in text.split(";\n") if s.strip()]
    return statements[:4], statements[4:]


@pytest.mark.skipif(not TIMESCALEDB.is_file(), reason="TimescaleDB is not installed (it is in "
                    "no package registry here; see README for how it was checked by hand)")
def test_a_live_timescaledb_site_equals_its_cloud(tmp_path: Path, pg_factory: Any,
                                                  kafka_broker: Any, unique_name: Any) -> None:
    site = pg_factory("site_tsdb", shared_preload_libraries="timescaledb")
    dsn = site.create_database(unique_name("tsdb"))
    before, during = workload()
    execute(dsn, "CREATE EXTENSION timescaledb", MARKER_DDL, *before,
            # rows from before the slot: the snapshot reads the hypertable, and the cloud table
            # it creates must still be a hypertable like the site's
            "INSERT INTO public.measurements VALUES ('2025-12-31 12:00+00', 1, 1.5, 'old'),"
            " ('2025-12-31 13:00+00', 2, 2.5, NULL)")
    execute(dsn, f"ALTER DATABASE {psycopg.conninfo.conninfo_to_dict(dsn)['dbname']}"
                 " SET timescaledb.enable_compressed_direct_batch_delete = off")
    # a TimescaleDB cloud: the missing cloud table becomes a hypertable like the site's
    cloud = pg_factory("cloud_tsdb", shared_preload_libraries="timescaledb").create_database(
        unique_name("cloud"))
    execute(cloud, "CREATE EXTENSION timescaledb")
    prefix = unique_name("tsdb")
    source = Daemon("source", site_config(tmp_path / "site.toml", "ts", dsn,
                                          kafka_broker.bootstrap_servers, prefix,
                                          slot=unique_name("slot")), tmp_path, "source").start()
    sink = Daemon("sink", cloud_config(tmp_path / "cloud.toml", cloud,
                                       kafka_broker.bootstrap_servers, prefix, unique_name("g")),
                  tmp_path, "sink").start()
    daemons = (source, sink)
    try:
        wait_until(lambda: count(dsn, "SELECT count(*) FROM pg_replication_slots WHERE active")
                   == 1, TIMEOUT, "the slot to be active", daemons)
        execute(dsn, *during)
        sync(dsn, cloud, "ts", TIMEOUT, daemons)
        for table, cols in [("public.site_config", ["id", "name", "blob"]),
                            ("public.alarms", ["id", "msg"]),
                            ("public.measurements", ["device_id", "ts", "value", "note"])]:
            assert rows_of(cloud, table, cols, where_site="ts") == rows_of(dsn, table, cols), table
        assert count(cloud, "SELECT count(*) FROM public.measurements") == \
            count(dsn, "SELECT count(*) FROM public.measurements") == 4305
        assert "timescaledb_chunks" in source.log()
        assert count(cloud, "SELECT count(*) FROM _timescaledb_catalog.hypertable h JOIN"
                            " _timescaledb_catalog.dimension d ON d.hypertable_id = h.id"
                            " WHERE h.table_name = 'measurements' AND d.column_name = 'ts'"
                            " AND d.interval_length = 86400000000") == 1
        assert count(cloud, "SELECT count(*) FROM timescaledb_information.chunks"
                            " WHERE hypertable_name = 'measurements'") == 4
    finally:
        for d in daemons:
            assert d.stop() == 0


@pytest.mark.skipif(not TIMESCALEDB.is_file(), reason="TimescaleDB is not installed")
def test_deletes_of_a_cloud_hypertable_touch_only_the_chunks_of_their_keys(
        pg_factory: Any, unique_name: Any) -> None:
    from psycopg import sql

    from sinks.changes import ColumnDef
    from sinks.sql import delete_using_stage

    cloud = pg_factory("cloud_tsdb", shared_preload_libraries="timescaledb").create_database(
        unique_name("prune"))
    execute(cloud, "CREATE EXTENSION timescaledb",
            "CREATE TABLE m (site_id text, device_id int, ts timestamptz, v float8,"
            " PRIMARY KEY (site_id, device_id, ts))",
            "SELECT create_hypertable('m', by_range('ts', interval '1 day'))",
            "INSERT INTO m SELECT 'a', g % 10, '2026-01-01'::timestamptz + g * interval '1 minute',"
            " g FROM generate_series(0, 14399) g")  # 10 daily chunks
    key = [ColumnDef("device_id", "device_id", "integer", True),
           ColumnDef("ts", "ts", "timestamp with time zone", True)]
    with psycopg.connect(cloud, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE s (site_id text, device_id int, ts timestamptz)")
        conn.execute("INSERT INTO s VALUES ('a', 1, '2026-01-03 00:01+00')")
        low, high = conn.execute("SELECT min(ts), max(ts) FROM s").fetchone()  # type: ignore[misc]
        for time_range, chunks in [(None, 10), (("ts", low, high), 1)]:
            statement = delete_using_stage(sql.Identifier("m"), "s", "site_id", key,
                                           time_range=time_range)
            plan = "\n".join(r[0] for r in conn.execute(
                sql.SQL("EXPLAIN (COSTS OFF) ") + statement).fetchall())
            assert len(set(re.findall(r"_hyper_\d+_\d+_chunk\b", plan))) == chunks, plan


@pytest.mark.skipif(not TIMESCALEDB.is_file(), reason="TimescaleDB is not installed")
def test_a_live_chunk_truncate_removes_that_chunks_rows_only(
        tmp_path: Path, pg_factory: Any, kafka_broker: Any, unique_name: Any) -> None:
    """TRUNCATE of one daily chunk at a live site: the cloud loses that day's rows of the site,
    keeps the others (cdc.source.catalog.ChunkCatalog.chunk_range reads the range from the catalog)."""
    site = pg_factory("site_tsdb", shared_preload_libraries="timescaledb")
    dsn = site.create_database(unique_name("tsdbtr"))
    execute(dsn, "CREATE EXTENSION timescaledb", MARKER_DDL,
            "CREATE TABLE public.m (ts timestamptz NOT NULL, device_id int NOT NULL, v float8,"
            " PRIMARY KEY (device_id, ts))",
            "SELECT create_hypertable('public.m', 'ts', chunk_time_interval => interval '1 day')")
    cloud = pg_factory("cloud").create_database(unique_name("cloudtr"))
    prefix = unique_name("tsdbtr")
    source = Daemon("source", site_config(tmp_path / "site.toml", "ts", dsn,
                                          kafka_broker.bootstrap_servers, prefix,
                                          slot=unique_name("slot")), tmp_path, "source").start()
    sink = Daemon("sink", cloud_config(tmp_path / "cloud.toml", cloud,
                                       kafka_broker.bootstrap_servers, prefix, unique_name("g")),
                  tmp_path, "sink").start()
    daemons = (source, sink)
    try:
        wait_until(lambda: count(dsn, "SELECT count(*) FROM pg_replication_slots WHERE active")
                   == 1, TIMEOUT, "the slot to be active", daemons)
        execute(dsn, "INSERT INTO public.m SELECT '2026-01-01'::timestamptz + g * interval"
                     " '1 minute', g % 10, g FROM generate_series(0, 4319) g")  # 3 daily chunks
        sync(dsn, cloud, "ts", TIMEOUT, daemons)
        with psycopg.connect(dsn) as conn:
            chunk = conn.execute("SELECT c FROM show_chunks('public.m') c ORDER BY c"
                                 " OFFSET 1 LIMIT 1").fetchone()[0]  # type: ignore[index]
        execute(dsn, f"TRUNCATE {chunk}")
        sync(dsn, cloud, "ts", TIMEOUT, daemons)
        cols = ["device_id", "ts", "v"]
        assert rows_of(cloud, "public.m", cols, where_site="ts") == rows_of(dsn, "public.m", cols)
        assert count(cloud, "SELECT count(*) FROM public.m") == 2880
    finally:
        for d in daemons:
            assert d.stop() == 0
