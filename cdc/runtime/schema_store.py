"""Where Avro schemas live in the self-contained mode: a compacted Kafka topic.

Key: the schema's fingerprint (16 hex digits); value: the schema JSON with its custom
attributes. The source publishes a schema, and waits until Kafka holds it, before the first
record that uses it; the sink reads the topic to resolve a fingerprint it has not seen.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

from cachetools import LRUCache
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from cdc.core.wire.avro import REGISTRY_ID_BASE, Codec, schema_json
from cdc.core.config import KafkaConfig
from cdc.core.errors import DeliveryError, SchemaError
from cdc.runtime.registry import RegistrySchemas, registry_client
from cdc.runtime.topics import client_config, ensure_topic

log = logging.getLogger(__name__)

SCHEMA_TOPIC_CONFIG = {"cleanup.policy": "compact"}
#: schemas the sink keeps parsed: the topic holds every version of every site table forever
#: (compacted, never deleted); one evicted is read from the topic again, equal
SCHEMAS_KEPT = 1024


class SchemaPublisher:
    """Source side: publish each new schema synchronously."""

    def __init__(self, kafka: KafkaConfig) -> None:
        self._topic = kafka.schema_topic
        ensure_topic(kafka, self._topic, SCHEMA_TOPIC_CONFIG)
        self._producer = Producer(client_config(kafka, **{"enable.idempotence": True, "acks": "all"}))

    def publish(self, codec: Codec, timeout: float = 60.0) -> None:
        errors: list[str] = []

        def report(err, _msg):  # type: ignore[no-untyped-def]
            if err is not None:
                errors.append(str(err))

        self._producer.produce(self._topic, key=f"{codec.fingerprint:016x}",
                               value=schema_json(codec.schema), on_delivery=report)
        left = self._producer.flush(timeout)
        if left or errors:
            raise DeliveryError(f"schema {codec.fingerprint:016x} not acknowledged by topic "
                                f"{self._topic}: {errors or 'timed out'}")


class SchemaRegistry:
    """Sink side: fingerprint -> Codec, read from the schema topic on demand; the most
    recently used :data:`SCHEMAS_KEPT` stay parsed."""

    def __init__(self, kafka: KafkaConfig, kept: int = SCHEMAS_KEPT) -> None:
        self._kafka = kafka
        self._codecs: LRUCache[int, Codec] = LRUCache(kept)

    def get(self, fp: int, where: str = "") -> Codec:
        codec = self._codecs.get(fp)
        if codec is None:
            codec = self.refresh(want=fp)
            if codec is None:
                raise SchemaError(f"{where}: schema {fp:016x} is not in topic {self._kafka.schema_topic}")
        return codec

    def add(self, codec: Codec) -> None:
        self._codecs[codec.fingerprint] = codec

    def __len__(self) -> int:
        return len(self._codecs)

    def refresh(self, timeout: float = 30.0, want: int | None = None) -> Codec | None:
        """Read the schema topic from the beginning to its current end; returns the schema
        ``want`` names if the topic holds it (kept aside: the schemas read after it may push it
        out of the cache)."""
        found: Codec | None = None
        topic = self._kafka.schema_topic
        consumer = Consumer(client_config(self._kafka, **{
            "group.id": f"tributary-schemas-{uuid.uuid4().hex}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "enable.partition.eof": True}))
        try:
            try:
                meta = consumer.list_topics(topic, timeout=timeout)
            except KafkaException as exc:
                raise SchemaError(f"cannot read schema topic {topic}: {exc}") from exc
            tmeta = meta.topics.get(topic)
            if tmeta is None or tmeta.error is not None:
                return None
            parts = [TopicPartition(topic, p, 0) for p in tmeta.partitions]
            ends = {}
            for tp in parts:
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
                if high > low:
                    ends[tp.partition] = high
            if not ends:
                return None
            consumer.assign([TopicPartition(topic, p, 0) for p in ends])
            deadline = time.monotonic() + timeout
            while ends and time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        ends.pop(msg.partition(), None)
                        continue
                    raise SchemaError(f"reading schema topic {topic}: {msg.error()}")
                if msg.value() is not None:
                    try:
                        codec = Codec.of(json.loads(msg.value()))
                    except Exception as exc:  # noqa: BLE001 - any writer can put bytes there
                        # not a schema: no record can name it, so nothing is lost by passing it
                        # (a record whose schema is missing stops its own site by name)
                        log.warning("schema topic record that is not a schema: skipped", extra={
                            "topic": topic, "offset": msg.offset(),
                            "error": f"{type(exc).__name__}: {exc}"[:300]})
                        continue
                    self._codecs[codec.fingerprint] = codec
                    if codec.fingerprint == want:
                        found = codec
                if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
            if ends:
                raise SchemaError(f"timed out reading schema topic {topic}")
        finally:
            consumer.close()
        if found is not None:
            self._codecs[found.fingerprint] = found  # the most recently used now
        return found


class SchemaResolver:
    """Sink side: a message's schema identity -> Codec, in either framing: fingerprints from
    the schema topic, Confluent schema IDs from the registry (``kafka.schema_registry_url``)."""

    def __init__(self, kafka: KafkaConfig) -> None:
        self._kafka = kafka
        self._topic = SchemaRegistry(kafka)
        self._registry: RegistrySchemas | None = None

    def get(self, identity: int, where: str = "") -> Codec:
        if identity < REGISTRY_ID_BASE:
            return self._topic.get(identity, where)
        if self._registry is None:
            if not self._kafka.schema_registry_url:
                raise SchemaError(f"{where}: message in the Confluent wire format (schema ID "
                                  f"{identity - REGISTRY_ID_BASE}) but kafka.schema_registry_url "
                                  "is not set")
            self._registry = RegistrySchemas(registry_client(self._kafka))
        return self._registry.get(identity, where)
