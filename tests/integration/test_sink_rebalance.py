"""A rebalance gives the sink a fresh start on every partition it is assigned, paused ones too.

The sink pauses the other partitions while it applies a large transaction in parts (and a
stopped site's partition). librdkafka keeps a partition paused across a rebalance that assigns
it again (librdkafka#1849), while the sink forgets, on assignment, that it paused anything: a
rebalance in the middle of a large transaction left the other sites stalled for good, without
a word (the fault suite's full form: site b stuck after a sink replica joined while site a's
large transaction was being applied).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg

from cdc.core import ledger
from cdc.core.config import load_config
from devenv.pipeline import cloud_config
from sinks.group_watch import GroupWatch
from sinks.sink import Sink, _SinkSession
from sinks.worker import ApplyWorker


def test_a_partition_paused_before_a_rebalance_is_consumed_after_it(
        pg_factory: Any, kafka_broker: Any, unique_name: Any, tmp_path: Path) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    prefix = unique_name("rb")
    cloud = pg_factory("cloud").create_database(unique_name("rebalance"))
    config = load_config(cloud_config(tmp_path / "cloud.toml", cloud,
                                      kafka_broker.bootstrap_servers, prefix, unique_name("g")))
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers})
    for future in admin.create_topics([NewTopic(f"{prefix}.a", 1, 1),
                                       NewTopic(f"{prefix}.b", 1, 1)]).values():
        future.result(30)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})

    def send(site: str, value: bytes) -> None:
        producer.produce(f"{prefix}.{site}", value, b"k", 0)
        assert producer.flush(30) == 0

    sink = Sink(config)  # its rebalance callbacks, on a consumer of the test's
    conn = psycopg.connect(cloud)
    with conn.transaction():
        ledger.ensure_schema(conn)
    no_applier: Any = type("NoApplier", (), {"forget": lambda self: None})()
    assigned: list[int] = []

    def on_assign(consumer: Any, partitions: list[Any]) -> None:
        sink._on_assign(consumer, partitions)
        assigned.append(len(partitions))

    consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap_servers,
                         "group.id": config.need_sink().group_id, "enable.auto.commit": False,
                         "topic.metadata.refresh.interval.ms": 1000})
    sink.state = _SinkSession(  # idle: the test reads, nothing is applied
        ApplyWorker(conn, no_applier, sink._apply_batch), GroupWatch(time.monotonic(), 60),
        consumer)
    sink.state.worker.start()
    consumer.subscribe([config.kafka.site_topic_pattern], on_assign=on_assign,
                       on_revoke=sink._on_revoke)

    def read(site: str, timeout: float) -> list[bytes]:
        got, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline and not got:
            for msg in consumer.consume(100, 0.2):
                if not msg.error() and msg.topic() == f"{prefix}.{site}":
                    got.append(msg.value())
        return got

    try:
        send("b", b"first")
        assert read("b", 30) == [b"first"]
        consumer.pause([TopicPartition(f"{prefix}.b", 0)])  # as _start_big does
        send("b", b"second")
        assert read("b", 3) == []  # paused
        # a new site's topic: the pattern subscription rebalances, every partition again
        admin.create_topics([NewTopic(f"{prefix}.c", 1, 1)])[f"{prefix}.c"].result(30)
        deadline = time.monotonic() + 60
        while len(assigned) < 2 and time.monotonic() < deadline:
            consumer.consume(100, 0.2)
        assert assigned[-1:] == [3], assigned
        assert read("b", 15) != [], "site b's partition stayed paused after the rebalance"
    finally:
        consumer.close()
        sink.state.worker.close()
        conn.close()
