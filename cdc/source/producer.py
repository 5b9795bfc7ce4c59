"""Kafka producer of a site's records; delivery reports feed the source's progress.

Idempotent, ``acks=all``, every record to partition 0 of the site topic, so Kafka acknowledges
records in the order they were produced and the acknowledged prefix is a count. A delivery error
is never skipped: it surfaces as :class:`DeliveryError`, the source drops this producer and
streams again from the slot's confirmed point.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from confluent_kafka import KafkaException, Producer

from cdc.core.config import KafkaConfig
from cdc.core.errors import DeliveryError
from cdc.core.wire.avro import Codec
from cdc.source.event_builder import Output, PublishSchema
from cdc.source.progress import SourceProgress
from cdc.runtime.topics import client_config, kafka_error_logger

log = logging.getLogger(__name__)

#: Defaults tuned for throughput with bounded memory; ``kafka.config`` overrides all but safety.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 200_000,
    "queue.buffering.max.kbytes": 65_536,
}
#: What the guarantees rest on; not overridable.
PRODUCER_SAFETY: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}


class EventProducer:
    """Produces encoded records to one topic and counts acknowledgements into ``progress``."""

    def __init__(self, kafka: KafkaConfig, topic: str, progress: SourceProgress,
                 publish_schema: Callable[[Codec], None] | None = None) -> None:
        self.topic = topic
        self._publish_schema = publish_schema  # None: the registry framing holds the schemas
        self._progress = progress
        self._error: str | None = None
        conf = dict(PRODUCER_DEFAULTS)
        conf.update(client_config(kafka))
        conf.update(PRODUCER_SAFETY)
        conf["on_delivery"] = self._on_delivery
        conf.setdefault("error_cb", kafka_error_logger(log))
        try:
            self._producer = Producer(conf)
        except KafkaException as exc:
            raise DeliveryError(f"cannot create Kafka producer for {topic}: {exc}") from exc
        self._produce = self._producer.produce
        self.poll = self._producer.poll

    def emit(self, item: Output) -> None:
        """One of the event builder's outputs: a record to produce, or a schema to publish
        (and have Kafka hold) before the records after it."""
        if type(item) is PublishSchema:
            if self._publish_schema is not None:
                self._publish_schema(item.codec)
        else:
            self.produce(*item)  # type: ignore[misc]

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            if self._error is None:
                self._error = f"{err} (topic {msg.topic()})"
            return
        if self._error is not None:
            return  # delivered after a gap: not part of the unbroken acknowledged prefix
        self._progress.acked += 1  # inlined on_acked: the hot path; confirm() settles commits

    def produce(self, key: bytes, value: bytes | None) -> None:
        try:
            self._produce(self.topic, value, key, 0)
        except BufferError:
            # The local queue is full: wait for deliveries (bounded memory), then once more.
            while True:
                self._producer.poll(0.05)
                self.check()
                try:
                    self._produce(self.topic, value, key, 0)
                    break
                except BufferError:
                    continue
        self._progress.produced += 1

    def queued(self) -> int:
        """Records waiting for Kafka's acknowledgement (the producer's queue)."""
        return len(self._producer)

    def check(self) -> None:
        """Raise if any delivery failed; then settle which commits are fully acknowledged."""
        if self._error is not None:
            raise DeliveryError(f"Kafka did not acknowledge a record: {self._error}; "
                                "restarting from the slot's confirmed LSN")
        self._progress.on_acked(0)

    def flush(self, timeout: float) -> int:
        left = self._producer.flush(timeout)
        self.check()
        return left

    def abandon(self) -> None:
        """Drop queued records without waiting (after a delivery error)."""
        try:
            self._producer.purge()
            self._producer.flush(0)
        except KafkaException:
            pass
