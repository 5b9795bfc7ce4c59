"""Tables without a key are multisets: the cloud holds each row as many times as the site does.

IoT tables often have no primary key (REPLICA IDENTITY FULL, as ``cdc check`` advises) and hold
equal rows. An INSERT adds one, an UPDATE or DELETE at the site changes exactly one equal row
(as PostgreSQL's own subscriber does), and the initial copy, a copy started over after a
kill -9, a backfill asked for again and a replay of the topic never double them.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from typing import Callable

import psycopg

from devenv.pipeline import REPO, execute
from tests.integration.sites import Pipeline
from tests.integration.test_snapshot import progress, wait_for

SAMPLES = ["CREATE TABLE samples (device int, ts timestamptz, value real, note text)",
           "ALTER TABLE samples REPLICA IDENTITY FULL"]
COLUMNS = "device, ts, value, note"
# 30 rows, many equal (10 distinct), NULLs in them too
SEED = ("INSERT INTO samples SELECT g % 4, timestamptz '2026-01-01 00:00+00' + (g % 3) *"
        " interval '1 min', (g % 2) * 1.5, CASE WHEN g % 5 = 0 THEN NULL ELSE 'n' END"
        " FROM generate_series(1, 30) g")


def multiset(dsn: str, where_site: str | None = None, table: str = "samples") -> Counter:
    query = f"SELECT {COLUMNS} FROM public.{table}"
    with psycopg.connect(dsn) as conn:
        if where_site is not None:
            rows = conn.execute(query + " WHERE site_id = %s", (where_site,)).fetchall()
        else:
            rows = conn.execute(query).fetchall()
    return Counter(tuple(r) for r in rows)


def one(where: str) -> str:
    """A condition that picks exactly one row of several equal ones (ctid)."""
    return f"ctid = (SELECT ctid FROM samples WHERE {where} LIMIT 1)"


def assert_same(p: Pipeline, site: str = "a", table: str = "samples") -> None:
    p.sync(site)
    site_rows, cloud_rows = multiset(p.site_dsn[site], table=table), \
        multiset(p.cloud_dsn, site, table=table)
    assert cloud_rows == site_rows, (f"site {sum(site_rows.values())} rows, cloud "
                                     f"{sum(cloud_rows.values())}: missing "
                                     f"{site_rows - cloud_rows}, extra {cloud_rows - site_rows}")


def test_equal_rows_are_all_kept_and_changed_one_at_a_time(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a", "b"))
    for dsn in p.site_dsn.values():
        execute(dsn, *SAMPLES, SEED)  # copied by the initial copy
    p.start()
    a = p.site_dsn["a"]
    assert_same(p)
    execute(a, SEED,  # 30 more equal rows, streamed
            "DELETE FROM samples WHERE " + one("device = 1 AND value = 1.5"),
            "UPDATE samples SET value = 9 WHERE " + one("device = 2 AND note IS NULL"),
            "UPDATE samples SET note = 'all' WHERE device = 3",  # every equal row, one event each
            "DELETE FROM samples WHERE " + one("device = 0"),
            "DELETE FROM samples WHERE " + one("device = 0"))
    with psycopg.connect(a) as conn:  # one transaction: insert an equal row, then remove one
        conn.execute(SEED.replace("generate_series(1, 30)", "generate_series(1, 2)"))
        conn.execute("DELETE FROM samples WHERE " + one("device = 1"))
        conn.execute("UPDATE samples SET device = 7 WHERE " + one("device = 2"))
    assert_same(p)
    assert_same(p, "b")
    assert sum(multiset(p.cloud_dsn, "a").values()) == 30 + 30 - 3 + 2 - 1
    p.stop()
    # restarted daemons read part of the topic again: nothing doubles, every transaction is
    # applied once
    p.start()
    execute(a, "DELETE FROM samples WHERE " + one("device = 3"))
    assert_same(p)
    p.stop()


def test_a_killed_copy_of_a_table_without_key_starts_over_and_doubles_nothing(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",), site_extra="snapshot_chunk_rows = 500")
    a = p.site_dsn["a"]
    execute(a, *SAMPLES, SEED.replace("generate_series(1, 30)", "generate_series(1, 200000)"))
    p.start(streaming=False)
    wait_for(p, "public.samples", "the initial copy to be under way", rows=5000)
    p.sources["a"].kill9()
    state, copied = progress(a, "public.samples")  # type: ignore[misc]
    assert state == "running" and copied < 200000, (state, copied)
    # changes after the slot's start: replayed over a newer copy they would double rows
    execute(a, SEED, "DELETE FROM samples WHERE " + one("device = 1"))
    p.sources["a"].start()
    wait_for(p, "public.samples", "the initial copy to finish", state="done")
    assert_same(p)
    assert "initial copy starts over" in p.sources["a"].log()
    p.stop()


def test_a_backfill_asked_for_again_replaces_the_rows(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",)).start()
    a = p.site_dsn["a"]
    execute(a, *SAMPLES, SEED)  # joins while streaming: backfilled
    wait_for(p, "public.samples", "the backfill of public.samples", state="done")
    assert_same(p)
    done = subprocess.run([sys.executable, "-m", "cdc.cli", "source", "snapshot", "--config",
                           str(p.sources["a"].config), "--table", "public.samples"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "snapshot requested" in done.stdout, done.stderr
    wait_for(p, "public.samples", "the second backfill", state="done")
    assert_same(p)
    p.stop()


def test_changes_while_a_backfill_of_a_table_without_key_is_in_flight_are_not_doubled(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    """The backfill's marker goes into the stream behind a large transaction; while the source
    works through it, the site keeps inserting equal rows and deleting one of several. Those
    changes follow the marker in the stream: the copy must hold the table as it was at the
    marker, or they arrive twice (inserts) or take a second equal row (deletes)."""
    import threading

    p = pipeline_factory(sites=("a",)).start()
    a = p.site_dsn["a"]
    execute(a, *SAMPLES, SEED)
    wait_for(p, "public.samples", "the backfill of public.samples", state="done")
    # a backlog the stream must read before it reaches the next marker
    execute(a, "INSERT INTO devices (id, name) SELECT g, 'x' FROM generate_series(1, 300000) g")
    done = subprocess.run([sys.executable, "-m", "cdc.cli", "source", "snapshot", "--config",
                           str(p.sources["a"].config), "--table", "public.samples"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "snapshot requested" in done.stdout, done.stderr
    stop = threading.Event()

    def churn() -> None:
        with psycopg.connect(a, autocommit=True) as conn:
            for n in range(400):  # bounded: ~8 s
                if stop.is_set():
                    return
                conn.execute(SEED.replace("generate_series(1, 30)", "generate_series(1, 2)"))
                conn.execute("DELETE FROM samples WHERE " + one(f"device = {n % 4}"))
                stop.wait(0.02)

    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    wait_for(p, "public.samples", "the second backfill", state="done")
    stop.set()
    worker.join(30)
    assert_same(p)
    p.stop()
