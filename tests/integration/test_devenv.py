"""The test environment itself: real PostgreSQL clusters and a real Kafka broker."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from devenv.kafka import ensure_kafka
from devenv.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def test_free_port_hands_out_distinct_bindable_ports() -> None:
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < p < 65536 for p in ports)


def test_two_clusters_support_logical_replication(pg_factory, unique_name) -> None:
    a, b = pg_factory("devenv_a"), pg_factory("devenv_b")
    assert a.port != b.port
    for cluster in (a, b):
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
            slot = unique_name("slot")
            row = conn.execute(
                "SELECT slot_name FROM pg_create_logical_replication_slot(%s, 'pgoutput')",
                (slot,),
            ).fetchone()
            assert row == (slot,)
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    # same name -> same (shared) cluster
    assert pg_factory("devenv_a") is a
    dsn = a.create_database(unique_name("db"))
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] in dsn


def test_kill9_then_start_recovers(pg_factory) -> None:
    pg = pg_factory("devenv_crash")
    dsn_before = pg.dsn()
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        # the clusters run with synchronous_commit=off: ask for a real commit
        conn.execute("SET synchronous_commit = on")
        conn.execute("CREATE TABLE IF NOT EXISTS survivor (id int)")
        conn.execute("INSERT INTO survivor VALUES (42)")
    pg.kill9()
    assert not pg.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.dsn(), connect_timeout=2).close()
    pg.start()
    assert pg.dsn() == dsn_before
    with psycopg.connect(pg.dsn()) as conn:
        assert (42,) in conn.execute("SELECT id FROM survivor").fetchall()
    assert "database system was interrupted" in pg.log_file.read_text()


def test_kafka_roundtrip_in_order(kafka_broker, unique_name) -> None:
    topic = unique_name("devenv_topic")  # auto-created (auto.create.topics.enable)
    errors: list[object] = []
    producer = Producer(
        {
            "bootstrap.servers": kafka_broker.bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
        }
    )
    for i in range(100):
        producer.produce(
            topic, key=str(i % 7).encode(), value=str(i).encode(),
            on_delivery=lambda err, msg: errors.append(err) if err else None,
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == []

    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap_servers,
            "group.id": unique_name("devenv_group"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([topic])
        values: list[int] = []
        deadline = time.monotonic() + 30
        while len(values) < 100 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            values.append(int(msg.value()))
    finally:
        consumer.close()
    assert values == list(range(100))


def test_ensure_kafka_is_idempotent(kafka_libs) -> None:
    t0 = time.monotonic()
    assert ensure_kafka() == kafka_libs
    assert time.monotonic() - t0 < 1.0
    assert any(p.name.startswith("kafka_2.13-") for p in kafka_libs.iterdir())


def test_cli_up_prints_dsns_and_stops_on_sigterm(pg_bindir) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "devenv", "up", "--sites", "1", "--no-kafka"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines_q: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines_q.put(l) for l in proc.stdout], daemon=True)
    reader.start()
    try:
        lines = [lines_q.get(timeout=60).strip() for _ in range(2)]
        assert lines[0].startswith("SITE1_DSN=host=127.0.0.1 "), lines
        assert lines[1].startswith("CLOUD_DSN=host=127.0.0.1 "), lines
        for line in lines:
            with psycopg.connect(line.split("=", 1)[1], connect_timeout=5) as conn:
                assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert "devenv: stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        reader.join(10)
        proc.stdout.close()
        proc.stderr.close()
