"""What a site topic last holds, read back at source start: the guard against LSNs going back.

On one server and timeline the WAL position only moves forward, and everything the source has
published was committed before the WAL position of its time. So if the topic holds a transaction
whose commit LSN is past the site's current WAL position, under the same system identifier and
timeline, the site's WAL has gone back: it was restored from a backup without a new timeline
(a file-level copy with its slot, say). Streaming on would publish new transactions under LSNs
the sink has already applied, and the sink would skip them as redeliveries: the source refuses to
start instead. (A restore that ends with a new timeline, the usual archive recovery, changes the
identity the sink keys its progress by, and needs no guard.)
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from cdc.core.wire.avro import read_fingerprint
from cdc.core.config import KafkaConfig
from cdc.core.errors import ConnectionLost, SchemaError
from cdc.core.lsn import format_lsn
from cdc.core.wire.model import CONTROL_KEY
from cdc.runtime.topics import client_config
from cdc.runtime.schema_store import SchemaResolver


@dataclass(frozen=True, slots=True)
class PublishedTx:
    """The last transaction Begin found on a site topic."""

    system_id: str
    timeline: int
    slot: str
    commit_lsn: int
    offset: int


def wal_went_back(last: PublishedTx | None, system_id: str, timeline: int,
                  wal_position: int) -> str | None:
    """Why streaming must not start (pure), or None when the site's WAL is where it should be."""
    if last is None or last.system_id != system_id or last.timeline != timeline:
        return None
    if last.commit_lsn <= wal_position:
        return None
    return (f"the topic already holds a transaction committed at {format_lsn(last.commit_lsn)} "
            f"(offset {last.offset}) by this server (system {system_id}, timeline {timeline}), "
            f"but the server's WAL is only at {format_lsn(wal_position)}: the site was restored "
            "from a backup without a new timeline, and the cloud would skip its new transactions "
            "as already applied. Re-sync this site (drop its slot, clear its rows in the cloud, "
            "start from a snapshot) before streaming again")


def last_published(kafka: KafkaConfig, topic: str, window: int = 5000,
                   timeout: float = 30.0) -> PublishedTx | None:
    """The last Begin on the topic, or None when it holds none. Read backwards from the end in
    windows growing fourfold (the last transaction may hold millions of changes); a Begin of any
    schema version and either framing counts (its schema resolved as the sink does)."""
    resolver = SchemaResolver(kafka)
    consumer = Consumer(client_config(kafka, **{
        "group.id": f"tributary-tail-{uuid.uuid4().hex}", "enable.auto.commit": False,
        # an offset the broker does not hold (a leader moving, retention) is an error to retry,
        # not a jump to the end that would read as "no Begin here" and skip the guard
        "auto.offset.reset": "error", "enable.partition.eof": True}))
    try:
        tp = TopicPartition(topic, 0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
                break
            except KafkaException as exc:
                # a topic created a moment ago may not be in the client's metadata yet
                unknown = exc.args and exc.args[0].code() == KafkaError._UNKNOWN_PARTITION
                if not unknown or time.monotonic() > deadline:
                    raise ConnectionLost(f"cannot read the end of topic {topic}: {exc}") from exc
                time.sleep(0.2)
        end = high
        while end > low:
            start = max(low, end - window)
            found = _last_begin(consumer, resolver, topic, start, end, timeout)
            if found is not None:
                return found
            end, window = start, window * 4
        return None
    finally:
        consumer.close()


def _last_begin(consumer: Consumer, resolver: SchemaResolver, topic: str, start: int, end: int,
                timeout: float) -> PublishedTx | None:
    """The last Begin among the records at offsets [start, end)."""
    consumer.assign([TopicPartition(topic, 0, start)])
    found: PublishedTx | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                return found
            raise ConnectionLost(f"reading topic {topic}: {msg.error()}")
        value = msg.value()
        if msg.key() == CONTROL_KEY and value:
            try:
                codec = resolver.get(read_fingerprint(value), f"{topic}@{msg.offset()}")
            except SchemaError:
                codec = None  # not a record of ours: it is no Begin
            if codec is not None and codec.kind == "begin":
                rec = codec.decode_body(value)
                found = PublishedTx(rec["system_id"], rec["timeline"], rec["slot"],
                                    rec["commit_lsn"], msg.offset())
        if msg.offset() + 1 >= end:
            return found
    raise ConnectionLost(f"timed out reading the end of topic {topic}")
