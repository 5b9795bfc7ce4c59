"""The whole pipeline on real servers: two sites -> Kafka -> one cloud, compared row by row."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest

from devenv.pipeline import count, execute, rows_of, wait_until
from tests.integration.sites import SEED, TIMEOUT, Pipeline


def test_two_sites_same_keys_mixed_workload(pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory().start()
    a, b = p.site_dsn["a"], p.site_dsn["b"]
    for dsn in (a, b):
        execute(dsn, *SEED)
    execute(a,
            "UPDATE devices SET firmware = 'v2', updated_at = now() WHERE id % 2 = 0",
            "UPDATE devices SET id = id + 100 WHERE id IN (3, 4)",  # primary key changes
            "DELETE FROM readings WHERE device_id = 5",
            "DELETE FROM devices WHERE id = 5",
            "UPDATE settings SET value = 'changed' WHERE key = 'k1'",  # blob: unchanged TOAST
            "UPDATE tags SET note = 'north' WHERE device_id < 4",
            "UPDATE tags SET tag = 'area' WHERE device_id = 9",
            "DELETE FROM tags WHERE device_id = 8",
            "BEGIN; INSERT INTO devices VALUES (50, 'new', NULL, NULL, now());"
            " UPDATE devices SET name = 'renamed' WHERE id = 50;"
            " DELETE FROM devices WHERE id = 6; INSERT INTO devices VALUES (6, 'back', 'v9', NULL);"
            " COMMIT",
            "TRUNCATE readings",
            "INSERT INTO readings VALUES (1, '2025-02-01 00:00+00', 42.25, 1)")
    execute(b,
            "UPDATE readings SET value = value * 2 WHERE device_id = 1",
            "DELETE FROM devices WHERE id = 7",
            "UPDATE settings SET blob = blob || 'x' WHERE key = 'k2'")
    p.sync("a")
    p.sync("b")
    p.assert_equal("a")
    p.assert_equal("b")
    # the truncate at site a removed only site a's rows
    assert count(p.cloud_dsn, "SELECT count(*) FROM readings WHERE site_id = 'b'") == 1000
    assert count(p.cloud_dsn, "SELECT count(*) FROM readings WHERE site_id = 'a'") == 1
    # the cloud table was created with the site's types, the site column first, key (site, id)
    with psycopg.connect(p.cloud_dsn) as conn:
        cols = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'public.readings'::regclass AND attnum > 0 ORDER BY attnum").fetchall()
        key = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'public.readings'::regclass AND contype = 'p'").fetchone()[0]
    assert cols == [("site_id", "text"), ("device_id", "integer"),
                    ("ts", "timestamp with time zone"), ("value", "double precision"),
                    ("quality", "smallint")]
    assert key == "PRIMARY KEY (site_id, device_id, ts)"
    p.stop()


def test_unchanged_toast_value_survives_an_update(pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",)).start()
    a = p.site_dsn["a"]
    execute(a, SEED[2])
    p.sync("a")
    execute(a, "UPDATE settings SET value = 'other column' WHERE key IN ('k1', 'k2')")
    p.sync("a")
    blob = rows_of(p.cloud_dsn, "public.settings", ["key", "blob"], where_site="a")
    assert len(blob[0][1]) == 12800 and blob == rows_of(a, "public.settings", ["key", "blob"])
    p.assert_equal("a")
    p.stop()


class Writer(threading.Thread):
    """Background site workload: many transactions of inserts, updates and deletes."""

    def __init__(self, dsn: str, transactions: int, rows: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.dsn, self.transactions, self.rows, self.stop = dsn, transactions, rows, stop
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def _work(self) -> None:
        dsn, transactions, rows, stop = self.dsn, self.transactions, self.rows, self.stop
        with psycopg.connect(dsn, autocommit=True) as conn:
            for t in range(transactions):
                if stop.is_set():
                    return
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO readings SELECT 100 + %s, timestamptz '2025-01-01 00:00+00'"
                        " + g * interval '1 second', g, 0 FROM generate_series(1, %s) g",
                        (t, rows))
                    conn.execute("UPDATE readings SET quality = 1 WHERE device_id = %s AND"
                                 " extract(second from ts)::int %% 5 = 0", (100 + t,))
                    conn.execute("DELETE FROM readings WHERE device_id = %s AND"
                                 " extract(second from ts)::int %% 7 = 0", (100 + t,))


@pytest.mark.parametrize("victim", ["source", "sink"])
def test_kill9_mid_stream_loses_and_doubles_nothing(
        pipeline_factory: Callable[..., Pipeline], victim: str) -> None:
    p = pipeline_factory(sites=("a",), sink_extra="batch_max_changes = 5000").start()
    a = p.site_dsn["a"]
    stop = threading.Event()
    writer = Writer(a, transactions=150, rows=400, stop=stop)
    daemon = p.sources["a"] if victim == "source" else p.sink
    try:
        wait_until(lambda: writer.error is not None
                   or count(p.cloud_dsn, "SELECT count(*) FROM readings") > 5000,
                   TIMEOUT, "rows to flow", p.daemons)
        daemon.kill9()
        time.sleep(1.0)  # the site keeps writing while the daemon is down
        daemon.start()
        writer.join(TIMEOUT)
        assert not writer.is_alive() and writer.error is None, writer.error
    finally:
        stop.set()
    p.sync("a")
    p.assert_equal("a")
    with psycopg.connect(p.cloud_dsn) as conn:
        total = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
    assert total == count(a, "SELECT count(*) FROM readings") > 40000
    p.stop()


@pytest.mark.parametrize("server", ["kafka", "cloud database", "site database"])
def test_server_crash_mid_stream_loses_and_doubles_nothing(
        pipeline_factory: Callable[..., Pipeline], kafka_libs: Any, tmp_path: Path,
        server: str) -> None:
    """kill -9 of a server while changes flow; the daemons retry, resume and end equal."""
    from devenv.kafka import KafkaBroker
    broker = KafkaBroker(tmp_path / "kafka", libs=kafka_libs).start()  # ours to crash
    try:
        p = pipeline_factory(broker=broker, sites=("a",), cluster_suffix="_crash",
                             sink_extra="batch_max_changes = 5000").start()
        a = p.site_dsn["a"]
        stop = threading.Event()
        writer = Writer(a, transactions=120, rows=300, stop=stop)
        try:
            wait_until(lambda: writer.error is not None
                       or count(p.cloud_dsn, "SELECT count(*) FROM readings") > 3000,
                       TIMEOUT, "rows to flow", p.daemons)
            if server == "kafka":
                broker.kill9()
                time.sleep(3)
                broker.start()
            elif server == "cloud database":
                p.clusters["cloud"].kill9()
                time.sleep(2)
                p.clusters["cloud"].start()
            else:
                writer.join(TIMEOUT)  # the writer's connection dies with the site server
                p.clusters["a"].kill9()
                time.sleep(2)
                p.clusters["a"].start()
                execute(a, "INSERT INTO readings VALUES (999, now(), 1, 1)")
            writer.join(TIMEOUT)
            assert not writer.is_alive() and writer.error is None, writer.error
        finally:
            stop.set()
        p.sync("a")
        p.assert_equal("a")
        assert count(p.cloud_dsn, "SELECT count(*) FROM readings") == \
            count(a, "SELECT count(*) FROM readings") > 30000
        p.stop()
    finally:
        broker.stop()


def test_large_transaction_streams_through(pipeline_factory: Callable[..., Pipeline]) -> None:
    """A transaction larger than the sink's batch is applied in parts, atomically."""
    p = pipeline_factory(sites=("a",), sink_extra="batch_max_changes = 2000").start()
    a = p.site_dsn["a"]
    execute(a, "INSERT INTO readings SELECT d, timestamptz '2025-01-01 00:00+00'"
               " + m * interval '1 minute', m, 0 FROM generate_series(1, 10) d,"
               " generate_series(1, 3000) m")
    p.sync("a")
    p.assert_equal("a")
    assert count(p.cloud_dsn, "SELECT count(*) FROM readings") == 30000
    p.stop()


@pytest.mark.parametrize("big_last", [False, True], ids=["small-tail", "6000-change-tail"])
def test_site_restored_from_a_file_copy_is_refused_not_skipped(
        pipeline_factory: Callable[..., Pipeline], tmp_path: Path, big_last: bool) -> None:
    """A site whose WAL went back under the same identity: the source stops and says why, also
    when the topic's last transaction holds more records than one read window (5,000)."""
    import shutil
    import subprocess
    p = pipeline_factory(sites=("a",), cluster_suffix="_restore").start()
    a, cluster, source = p.site_dsn["a"], p.clusters["a"], p.sources["a"]
    execute(a, SEED[0])
    p.sync("a")
    assert source.stop() == 0
    cluster.stop()
    backup = tmp_path / "backup"
    subprocess.run(["cp", "-a", str(cluster.data_dir), str(backup)], check=True)
    cluster.start()
    source.start()
    execute(a, SEED[1], SEED[1].replace("generate_series(1, 50) m", "generate_series(51, 99) m"))
    p.sync("a")
    if big_last:  # no sync after it: this transaction is the topic's last
        execute(a, "INSERT INTO readings SELECT 500 + g % 100, timestamptz '2030-01-01 00:00+00'"
                   " + g * interval '1 second', g, 0 FROM generate_series(1, 6000) g")
        wait_until(lambda: count(p.cloud_dsn, "SELECT count(*) FROM readings WHERE"
                                              " device_id >= 500") == 6000,
                   TIMEOUT, "the big transaction in the cloud", p.daemons)
    assert source.stop() == 0
    cluster.stop()
    shutil.rmtree(cluster.data_dir)
    subprocess.run(["cp", "-a", str(backup), str(cluster.data_dir)], check=True)
    cluster.start()  # the site as it was before the readings: same system id and timeline
    source.start()
    wait_until(lambda: not source.alive(), TIMEOUT, "the source to refuse the restored site")
    assert source.proc.returncode == 1  # type: ignore[union-attr]
    assert "restored from a backup without a new timeline" in source.log()
    p.sink.stop()


def test_idle_slot_follows_the_server_when_nothing_published_changes(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    """Writes outside the publication must not pin WAL: the slot's confirmed LSN moves on."""
    p = pipeline_factory(sites=("a",)).start()
    a = p.site_dsn["a"]
    execute(a, "CREATE SCHEMA scratch", "CREATE TABLE scratch.log (n int)",
            "INSERT INTO scratch.log SELECT generate_series(1, 20000)")
    with psycopg.connect(a) as conn:
        target = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    slot_sql = ("SELECT count(*) FROM pg_replication_slots WHERE active AND"
                " confirmed_flush_lsn >= %s::pg_lsn")
    wait_until(lambda: count(a, slot_sql, (str(target),)) == 1, 30,
               f"the slot to confirm past {target}", p.daemons)
    p.stop()


def test_large_transaction_cut_short_by_a_source_crash_is_applied_once(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    """The source dies while the sink holds part of a large transaction in an open cloud
    transaction; the transaction comes again from its Begin and is applied exactly once."""
    p = pipeline_factory(sites=("a",), sink_extra="batch_max_changes = 1000").start()
    a = p.site_dsn["a"]
    execute(a, "INSERT INTO readings SELECT d, timestamptz '2025-01-01 00:00+00'"
               " + m * interval '1 minute', m, 0 FROM generate_series(1, 20) d,"
               " generate_series(1, 5000) m")
    wait_until(lambda: "applying a large transaction in parts" in p.sink.log(), TIMEOUT,
               "the sink to apply the large transaction in parts", p.daemons)
    p.sources["a"].kill9()
    p.sources["a"].start()
    p.sync("a")
    p.assert_equal("a")
    assert count(p.cloud_dsn, "SELECT count(*) FROM readings") == 100000
    p.stop()
