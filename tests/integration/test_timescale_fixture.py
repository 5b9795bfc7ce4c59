"""The recorded TimescaleDB 2.28.3 stream, through the decoder, the chunk filter, the event
builder, a real Kafka broker and the sink, reaches exactly the fixture's expected.json in a real
cloud PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer

from cdc.core.config import KafkaConfig
from cdc.core.lsn import format_lsn
from cdc.source.event_builder import SiteIdentity
from tests.collecting_builder import CollectingBuilder
from cdc.source.pgoutput import Begin, Commit, Relation, Truncate, decode_message
from cdc.runtime.topics import ensure_topic
from cdc.runtime.schema_store import SchemaPublisher
from cdc.source.timescale import ChunkRange, TimescaleFilter
from devenv.pipeline import Daemon, cloud_config, site_applied_lsn, wait_until
from tests.integration.sites import TIMEOUT
from tests.unit.test_timescale import FIXTURE, recorded_catalog

SITE = SiteIdentity("ts-site", "7400000000000000001", 1, "fixture_slot", "site")


#: the daily chunks of public.measurements in the recording (chunk_time_interval 1 day, UTC)
DAY_US = 86_400_000_000
JAN_1_US = 1_767_225_600_000_000  # 2026-01-01 00:00 UTC in Unix microseconds
CHUNK_RANGES = {("_timescaledb_internal", f"_hyper_7_{15 + i}_chunk"):
                ChunkRange("ts", JAN_1_US + i * DAY_US, JAN_1_US + (i + 1) * DAY_US)
                for i in range(3)}


def publish_fixture(kafka: KafkaConfig, topic: str, truncate_chunk: str | None = None) -> int:
    """Replay the recording as the source would; returns the last transaction's end LSN.
    With ``truncate_chunk``, one more transaction follows: TRUNCATE of that chunk."""
    catalog = recorded_catalog()
    tsf = TimescaleFilter(lambda schema, table: catalog.get((schema, table)),
                          ranges=lambda schema, table: CHUNK_RANGES.get((schema, table)))
    builder = CollectingBuilder(SITE, on_new_schema=SchemaPublisher(kafka).publish,
                           hypertable_of=tsf.hypertable_of)
    ensure_topic(kafka, topic, {})
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 20})
    end_lsn = 0
    messages = [decode_message(bytes.fromhex(json.loads(line)["payload"]))
                for line in (FIXTURE / "stream.jsonl").read_text().splitlines()]
    if truncate_chunk is not None:
        oid = next(m.oid for m in messages if isinstance(m, Relation) and m.name == truncate_chunk)
        last = next(m for m in reversed(messages) if isinstance(m, Commit))
        lsn = last.end_lsn + 0x100
        messages += [Begin(lsn, last.commit_ts + 1, 999_999), Truncate((oid,), False, False),
                     Commit(0, lsn, lsn + 0x30, last.commit_ts + 1)]
    for raw in messages:
        msg = tsf(raw)
        if msg is None:
            continue
        for key, value in builder.handle(msg):
            producer.produce(topic, key=key, value=value)
            producer.poll(0)
        if isinstance(msg, Commit):
            end_lsn = msg.end_lsn
    assert producer.flush(60) == 0
    return end_lsn


def test_the_recorded_timescaledb_site_reaches_the_expected_cloud(
        tmp_path: Path, pg_factory: Any, kafka_broker: Any, unique_name: Any) -> None:
    prefix = unique_name("ts")
    kafka = KafkaConfig(bootstrap_servers=kafka_broker.bootstrap_servers, topic_prefix=prefix)
    end_lsn = publish_fixture(kafka, kafka.site_topic(SITE.site_id))
    cloud = pg_factory("cloud").create_database(unique_name("tscloud"))
    sink = Daemon("sink", cloud_config(tmp_path / "cloud.toml", cloud, kafka.bootstrap_servers,
                                       prefix, unique_name("g")), tmp_path, "sink").start()
    try:
        wait_until(lambda: site_applied_lsn(cloud, SITE.site_id) == format_lsn(end_lsn), TIMEOUT,
                   "the sink to apply the whole recording", (sink,))
    finally:
        assert sink.stop() == 0
    expected = json.loads((FIXTURE / "expected.json").read_text())
    with psycopg.connect(cloud) as conn:
        site_config = conn.execute(
            "SELECT id::text, name, md5(blob) FROM public.site_config WHERE site_id = %s"
            " ORDER BY id", (SITE.site_id,)).fetchall()
        alarms = conn.execute("SELECT id::text, msg FROM public.alarms WHERE site_id = %s"
                              " ORDER BY id", (SITE.site_id,)).fetchall()
        count, total, notes = conn.execute(
            "SELECT count(*), sum(value), count(note) FROM public.measurements"
            " WHERE site_id = %s", (SITE.site_id,)).fetchone()  # type: ignore[misc]
    assert [list(r) for r in site_config] == expected["public.site_config"]
    assert [list(r) for r in alarms] == expected["public.alarms"]
    assert {"count": count, "sum_value": total, "notes": notes} == expected["public.measurements"]


def test_a_chunk_truncate_removes_that_chunks_rows_only(
        tmp_path: Path, pg_factory: Any, kafka_broker: Any, unique_name: Any) -> None:
    """TRUNCATE of the recording's second daily chunk (its Truncate message names the chunk's
    OID): the cloud loses that day's rows of the site and keeps the other two days."""
    prefix = unique_name("tstr")
    kafka = KafkaConfig(bootstrap_servers=kafka_broker.bootstrap_servers, topic_prefix=prefix)
    end_lsn = publish_fixture(kafka, kafka.site_topic(SITE.site_id), "_hyper_7_16_chunk")
    cloud = pg_factory("cloud").create_database(unique_name("tstrcloud"))
    sink = Daemon("sink", cloud_config(tmp_path / "cloud.toml", cloud, kafka.bootstrap_servers,
                                       prefix, unique_name("g")), tmp_path, "sink").start()
    try:
        wait_until(lambda: site_applied_lsn(cloud, SITE.site_id) == format_lsn(end_lsn), TIMEOUT,
                   "the sink to apply the whole recording and the truncate", (sink,))
    finally:
        assert sink.stop() == 0
    expected = json.loads((FIXTURE / "expected.json").read_text())["public.measurements"]
    with psycopg.connect(cloud) as conn:
        days = dict(conn.execute(
            "SELECT (ts AT TIME ZONE 'UTC')::date::text, count(*) FROM public.measurements"
            " WHERE site_id = %s GROUP BY 1", (SITE.site_id,)).fetchall())
    # the recording's rows per day: 1440 minutes, less its deletes (12 on Jan 1, 6 on Jan 3:
    # workload.sql) plus the late arrival on Jan 1; Jan 2 is gone
    assert days == {"2026-01-01": 1440 - 12 + 1, "2026-01-03": 1440 - 6}, days
    assert sum(days.values()) == expected["count"] - 1440
