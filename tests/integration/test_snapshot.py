"""Rows a site holds before its stream: copied in key-ordered chunks while changes stream,
resumed (not restarted) after a kill -9, and backfilled for tables that join later."""

from __future__ import annotations

import threading
from typing import Callable

from devenv.pipeline import count, execute, rows_of, wait_until
from tests.integration.sites import SEED, TABLES, TIMEOUT, Pipeline

BIG = ("INSERT INTO readings SELECT 1000 + g % 50, timestamptz '2026-01-01 00:00+00'"
       " + g * interval '1 second', g, (g % 3)::smallint FROM generate_series(1, 60000) g")


def progress(dsn: str, table: str) -> tuple[str, int] | None:
    import psycopg
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT state, rows FROM tributary.snapshot_progress"
                           " WHERE table_schema || '.' || table_name = %s", (table,)).fetchone()
    return None if row is None else (row[0], int(row[1]))


def wait_for(p: Pipeline, table: str, what: str, state: str | None = None,
             rows: int = 0) -> None:
    """Wait until the site's snapshot progress of ``table`` has ``state`` (or >= ``rows``)."""
    def reached() -> bool:
        found = progress(p.site_dsn["a"], table) or ("", 0)
        return found[0] == state if state is not None else found[1] >= rows
    wait_until(reached, TIMEOUT, what, p.daemons)


def test_existing_rows_are_copied_while_changes_stream(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",), site_extra="snapshot_chunk_rows = 97")
    a = p.site_dsn["a"]
    execute(a, *SEED)  # before the slot exists: only a snapshot can bring these
    p.start()
    stop = threading.Event()

    def writer() -> None:  # changes to the very rows being copied
        i = 0
        while not stop.is_set() and i < 300:
            execute(a, f"UPDATE readings SET value = -{i} WHERE device_id = {i % 20 + 1}"
                       f" AND ts = timestamptz '2025-01-01 00:00+00' + {i % 50 + 1} * interval"
                       " '1 minute'",
                    f"DELETE FROM readings WHERE device_id = {i % 20 + 1} AND ts ="
                    f" timestamptz '2025-01-01 00:00+00' + {(i + 7) % 50 + 1} * interval '1 minute'",
                    f"INSERT INTO devices (id, name) VALUES ({500 + i}, 'new {i}')")
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    thread.join(120)
    stop.set()
    for table in TABLES:
        wait_for(p, table, f"the snapshot of {table} to finish", state="done")
    p.sync("a")
    p.assert_equal("a")
    assert "snapshot progress" in p.sources["a"].log()
    p.stop()


def test_a_killed_source_resumes_its_snapshot_where_it_was(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",), site_extra="snapshot_chunk_rows = 1000")
    a = p.site_dsn["a"]
    execute(a, BIG)
    p.start()
    wait_for(p, "public.readings", "the snapshot to be under way", rows=10000)
    # let the slot confirm what is copied so far, then kill the source mid-snapshot
    wal = count(a, "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
    wait_until(lambda: count(a, "SELECT max(confirmed_flush_lsn - '0/0'::pg_lsn)"
                                " FROM pg_replication_slots") >= wal, TIMEOUT,
               "the slot to confirm the first chunks", p.daemons)
    p.sources["a"].kill9()
    state, copied = progress(a, "public.readings")  # type: ignore[misc]
    assert state == "running" and copied < 60000, (state, copied)
    p.sources["a"].start()
    wait_for(p, "public.readings", "the snapshot to finish", state="done")
    p.sync("a")
    assert rows_of(p.cloud_dsn, "public.readings", TABLES["public.readings"], where_site="a") \
        == rows_of(a, "public.readings", TABLES["public.readings"])
    # resumed, not started over: the confirmed chunks (10,000 rows or more) were not copied again
    state, rows = progress(a, "public.readings")  # type: ignore[misc]
    assert state == "done" and rows - 60000 <= copied - 10000, (rows, copied)
    p.stop()


def test_a_table_that_joins_later_is_backfilled(pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",)).start()
    a = p.site_dsn["a"]
    execute(a, "CREATE TABLE late (id int PRIMARY KEY, v text)",
            "INSERT INTO late SELECT g, 'before ' || g FROM generate_series(1, 1234) g")
    wait_for(p, "public.late", "the backfill of public.late", state="done")
    execute(a, "UPDATE late SET v = 'after' WHERE id % 100 = 0")
    p.sync("a")
    assert rows_of(p.cloud_dsn, "public.late", ["id", "v"], where_site="a") == \
        rows_of(a, "public.late", ["id", "v"])
    assert count(p.cloud_dsn, "SELECT count(*) FROM public.late") == 1234
    p.stop()


def test_a_snapshot_can_be_cancelled_and_asked_for_again(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    import subprocess
    import sys
    import time

    from devenv.pipeline import REPO

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "cdc.cli", "source", "snapshot", "--config",
                               str(p.sources["a"].config), *args], capture_output=True,
                              text=True, timeout=60, cwd=REPO)
        assert done.returncode == 0, done.stderr
        return done.stdout

    p = pipeline_factory(sites=("a",), site_extra="snapshot_chunk_rows = 500")
    a = p.site_dsn["a"]
    execute(a, BIG)
    p.start()
    wait_for(p, "public.readings", "the snapshot to be under way", rows=2000)
    assert "cancelled" in cli("--table", "public.readings", "--cancel")
    time.sleep(2)  # a chunk in flight may still land
    state, rows = progress(a, "public.readings")  # type: ignore[misc]
    time.sleep(3)
    assert progress(a, "public.readings") == ("cancelled", rows) and rows < 60000
    assert "snapshot requested" in cli("--table", "public.readings")
    wait_for(p, "public.readings", "the snapshot asked for again to finish", state="done")
    p.sync("a")
    assert count(p.cloud_dsn, "SELECT count(*) FROM public.readings") == 60000
    p.stop()
