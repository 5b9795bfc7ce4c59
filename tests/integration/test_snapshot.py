"""Rows a site holds before its stream: copied at the slot's start in key-ordered chunks,
resumed (not restarted) after a kill -9, and tables that join later backfilled while the others
stream."""

from __future__ import annotations

import threading
from typing import Any, Callable

from devenv.pipeline import count, execute, rows_of, wait_until
from tests.integration.sites import SEED, TABLES, TIMEOUT, Pipeline

BIG = ("INSERT INTO readings SELECT 1000 + g % 50, timestamptz '2026-01-01 00:00+00'"
       " + g * interval '1 second', g, (g % 3)::smallint FROM generate_series(1, 60000) g")


def progress(dsn: str, table: str) -> tuple[str, int] | None:
    import psycopg
    with psycopg.connect(dsn) as conn:
        try:
            row = conn.execute("SELECT state, rows FROM tributary.snapshot_progress"
                               " WHERE table_schema || '.' || table_name = %s",
                               (table,)).fetchone()
        except psycopg.errors.UndefinedTable:  # the source has not started yet
            return None
    return None if row is None else (row[0], int(row[1]))


def wait_for(p: Pipeline, table: str, what: str, state: str | None = None,
             rows: int = 0) -> None:
    """Wait until the site's snapshot progress of ``table`` has ``state`` (or >= ``rows``)."""
    def reached() -> bool:
        found = progress(p.site_dsn["a"], table) or ("", 0)
        return found[0] == state if state is not None else found[1] >= rows
    wait_until(reached, TIMEOUT, what, p.daemons)


def topic_events(p: Pipeline, site: str) -> list[dict[str, Any]]:
    """Every change event on a site's topic, decoded (Begin, Commit and tombstones left out)."""
    from confluent_kafka import Consumer, TopicPartition

    from cdc.core.wire.avro import read_fingerprint
    from cdc.core.config import load_config
    from cdc.runtime.schema_store import SchemaResolver

    kafka = load_config(p.sink.config).kafka
    topic = kafka.site_topic(site)
    resolver = SchemaResolver(kafka)
    consumer = Consumer({"bootstrap.servers": p.kafka, "group.id": topic + "-read",
                         "enable.auto.commit": False})
    events: list[dict[str, Any]] = []
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        consumer.assign([TopicPartition(topic, 0, 0)])
        for _ in range(high + 100):  # bounded: every record once, and a few empty polls
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            if msg.value() is not None:
                codec = resolver.get(read_fingerprint(msg.value()))
                if codec.kind == "change":
                    events.append(codec.decode_body(msg.value()))
            if msg.offset() >= high - 1:
                break
    finally:
        consumer.close()
    return events


def test_the_initial_copy_is_the_site_at_the_slots_start(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    """Transfers between accounts keep the sum of balances: a copy that is one state of the
    site sums to it exactly; accounts reference branches, copied first for the cloud's FK."""
    p = pipeline_factory(sites=("a",), site_extra="snapshot_chunk_rows = 50")
    a = p.site_dsn["a"]
    execute(a, "CREATE TABLE branches (id int PRIMARY KEY, name text)",
            "CREATE TABLE accounts (id int PRIMARY KEY, branch int NOT NULL REFERENCES branches,"
            " balance bigint NOT NULL)",
            "INSERT INTO branches SELECT g, 'b' || g FROM generate_series(1, 300) g",
            "INSERT INTO accounts SELECT g, 1 + g % 300, 100 FROM generate_series(1, 3000) g")
    execute(p.cloud_dsn,
            "CREATE TABLE branches (site_id text, id int, name text, PRIMARY KEY (site_id, id))",
            "CREATE TABLE accounts (site_id text, id int, branch int NOT NULL, balance bigint,"
            " PRIMARY KEY (site_id, id), FOREIGN KEY (site_id, branch) REFERENCES branches"
            " (site_id, id) DEFERRABLE INITIALLY DEFERRED)")
    stop = threading.Event()
    moved = [0]

    def transfers() -> None:  # from high ids (copied last) to low ones (copied first)
        import psycopg
        with psycopg.connect(a, autocommit=True) as conn:
            while not stop.is_set() and moved[0] < 3000:
                i = moved[0]
                with conn.transaction():
                    conn.execute("UPDATE accounts SET balance = balance - 7 WHERE id = %s",
                                 (3000 - i % 1000,))
                    conn.execute("UPDATE accounts SET balance = balance + 7 WHERE id = %s",
                                 (1 + i % 1000,))
                    if i % 100 == 0:  # new branches and accounts referencing them
                        conn.execute("INSERT INTO branches VALUES (%s, 'new')", (1000 + i,))
                        conn.execute("INSERT INTO accounts VALUES (%s, %s, 0)",
                                     (10000 + i, 1000 + i))
                moved[0] += 1

    thread = threading.Thread(target=transfers)
    thread.start()
    try:
        p.start()
        for table in ("public.branches", "public.accounts"):
            wait_for(p, table, f"the initial copy of {table}", state="done")
    finally:
        stop.set()
        thread.join(60)
    assert moved[0] > 0
    p.sync("a")
    for table, cols in (("public.branches", ["id", "name"]),
                        ("public.accounts", ["id", "branch", "balance"])):
        assert rows_of(p.cloud_dsn, table, cols, where_site="a") == rows_of(a, table, cols)
    copied = [e["after"] for e in topic_events(p, "a")
              if e["op"] == "r" and e["source"]["table"] == "accounts"]
    assert len({r["id"] for r in copied}) == len(copied) >= 3000
    assert sum(r["balance"] for r in copied) == 300000  # one state of the site: the slot's start
    assert "stopped" not in p.sink.log()
    p.stop()


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


def test_a_killed_source_resumes_its_initial_copy_where_it_was(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",), site_extra="snapshot_chunk_rows = 200")
    a = p.site_dsn["a"]
    execute(a, BIG.replace("60000", "400000"))
    p.start(streaming=False)
    wait_for(p, "public.readings", "the initial copy to be under way", rows=10000)
    p.sources["a"].kill9()
    state, copied = progress(a, "public.readings")  # type: ignore[misc]
    assert state == "running" and copied < 400000, (state, copied)
    # after the slot's start, to rows not copied yet (the key order ends with device 1049)
    execute(a, "UPDATE readings SET value = -1 WHERE device_id = 1049",
            "DELETE FROM readings WHERE device_id = 1048")
    p.sources["a"].start()
    wait_for(p, "public.readings", "the initial copy to finish", state="done")
    p.sync("a")
    assert rows_of(p.cloud_dsn, "public.readings", TABLES["public.readings"], where_site="a") \
        == rows_of(a, "public.readings", TABLES["public.readings"])
    assert "initial copy resumed" in p.sources["a"].log()
    # every row of the untouched devices was copied, and the rows recorded before the kill were
    # not published again (a copy started over would repeat all of them)
    copied_keys = [(e["after"]["device_id"], e["after"]["ts"]) for e in topic_events(p, "a")
                   if e["op"] == "r" and e["after"]["device_id"] < 1048]
    assert len(set(copied_keys)) == 384000, len(set(copied_keys))
    assert len(copied_keys) < 384000 + copied, (len(copied_keys), copied)
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

    p = pipeline_factory(sites=("a",), site_extra="snapshot_chunk_rows = 2000")
    a = p.site_dsn["a"]
    execute(a, BIG.replace("60000", "400000"))
    p.start(streaming=False)
    wait_for(p, "public.readings", "the initial copy to be under way", rows=2000)
    assert "cancelled" in cli("--table", "public.readings", "--cancel")
    time.sleep(2)  # a chunk in flight may still land
    state, rows = progress(a, "public.readings")  # type: ignore[misc]
    time.sleep(3)
    assert progress(a, "public.readings") == ("cancelled", rows) and rows < 400000
    # asked for again: copied while the site streams (the slot's start is long gone)
    assert "snapshot requested" in cli("--table", "public.readings")
    wait_for(p, "public.readings", "the snapshot asked for again to finish", state="done")
    p.sync("a")
    assert count(p.cloud_dsn, "SELECT count(*) FROM public.readings") == 400000
    p.stop()
