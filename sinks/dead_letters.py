"""Dead letters: a site transaction the cloud cannot apply, kept whole in a Kafka topic.

With ``sink.dead_letter_topic`` set, the sink copies every record of such a transaction (its
Begin, its changes and its Commit, bytes unchanged) to that topic, each with headers naming the
reason and where it came from, and only then records it in ``tributary.dead_letters`` in the
cloud transaction that moves the site past it: nothing is ever passed over without a copy and
a row that says why. The site goes on with its next transaction.

``cdc replay --dead-letters`` reads a site's pending dead letters back from the topic and
applies each transaction, in one cloud transaction of its own, once the cause is fixed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import psycopg
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from cdc.core import ledger
from cdc.core.config import Config, KafkaConfig
from cdc.core.errors import ConnectionLost, TributaryError
from cdc.core.lsn import format_lsn
from cdc.runtime.topics import client_config, ensure_topic
from sinks.batcher import DeadTx

log = logging.getLogger(__name__)

#: the headers every dead-letter record carries (values are UTF-8 text)
H_REASON, H_SITE, H_TOPIC, H_PARTITION, H_OFFSET = (
    "tributary.reason", "tributary.site", "tributary.topic", "tributary.partition",
    "tributary.offset")
H_COMMIT_LSN, H_TABLES, H_FIRST, H_LAST = (
    "tributary.commit_lsn", "tributary.tables", "tributary.first_offset", "tributary.last_offset")
COPY_TIMEOUT_S = 120.0


class DeadLetterError(TributaryError):
    """Dead letters that cannot be written or read back (topic missing, records gone)."""


@dataclass(frozen=True)
class DeadLetter:
    """A row of ``tributary.dead_letters``: one site transaction in the dead-letter topic."""

    site: str
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    commit_lsn: str
    xid: int
    tables: list[str]
    reason: str
    dead_letter_topic: str
    dlt_first: int
    dlt_last: int
    state: str


def ensure(kafka: KafkaConfig, topic: str) -> None:
    """The dead-letter topic, one partition (its records stay in the order written)."""
    ensure_topic(kafka, topic, kafka.topic_config)


def copy_to_topic(kafka: KafkaConfig, group_id: str, site: str, topic: str, partition: int,
                  dead: DeadTx, dead_letter_topic: str,
                  stop: Callable[[], bool] = lambda: False) -> tuple[int, int]:
    """Copy the site topic's records ``dead.first_offset..dead.last_offset`` to the dead-letter
    topic and wait until Kafka holds them; returns the dead-letter offsets of the first and last.

    Read again from Kafka rather than kept in memory: a dead transaction may be any size.
    """
    headers = [(H_REASON, dead.reason[:4000].encode()), (H_SITE, site.encode()),
               (H_TOPIC, topic.encode()), (H_PARTITION, str(partition).encode()),
               (H_COMMIT_LSN, format_lsn(dead.tx.commit_lsn).encode()),
               (H_TABLES, ",".join(dead.tables).encode()),
               (H_FIRST, str(dead.first_offset).encode()),
               (H_LAST, str(dead.last_offset).encode())]
    consumer = Consumer(client_config(kafka, **{
        "group.id": f"{group_id}-dead-letters", "enable.auto.commit": False,
        "enable.partition.eof": False}))
    producer = Producer(client_config(kafka, **{"enable.idempotence": True, "acks": "all",
                                                "linger.ms": 20}))
    delivered: list[int] = []
    errors: list[str] = []

    def report(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            delivered.append(msg.offset())

    where = f"{topic}[{partition}]"
    try:
        consumer.assign([TopicPartition(topic, partition, dead.first_offset)])
        deadline = time.monotonic() + COPY_TIMEOUT_S
        offset = dead.first_offset
        while offset <= dead.last_offset:
            if time.monotonic() > deadline or stop():
                raise ConnectionLost(f"{where}: dead letter of site {site}: records {offset}.."
                                     f"{dead.last_offset} not read within {COPY_TIMEOUT_S:.0f} s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise ConnectionLost(f"{where}: dead letter of site {site}: {msg.error()}")
            if msg.offset() > offset and offset == dead.first_offset:
                raise DeadLetterError(
                    f"{where}: dead letter of site {site}: its Begin at offset {offset} is gone "
                    f"from Kafka (the first record is at {msg.offset()})")
            producer.produce(dead_letter_topic, key=msg.key(), value=msg.value(),
                             headers=[*headers, (H_OFFSET, str(msg.offset()).encode())],
                             on_delivery=report)
            producer.poll(0)
            offset = msg.offset() + 1
        if producer.flush(COPY_TIMEOUT_S) > 0 or errors:
            raise ConnectionLost(f"dead-letter topic {dead_letter_topic}: Kafka did not take the "
                                 f"dead letter of site {site} ({errors[:1] or 'timed out'})")
    except KafkaException as exc:
        raise ConnectionLost(f"dead letter of site {site}: {exc}") from exc
    finally:
        consumer.close()
    return min(delivered), max(delivered)


def record(conn: psycopg.Connection, site: str, topic: str, partition: int, dead: DeadTx,
           dead_letter_topic: str, dlt_offsets: tuple[int, int]) -> None:
    """In the cloud transaction that moves the site past it: the dead letter's row."""
    ledger.record_dead_letter(conn, site, topic, partition, dead.first_offset, dead.last_offset,
                              dead.tx.commit_lsn, dead.tx.xid, dead.tables, dead.reason,
                              dead_letter_topic, dlt_offsets)


def pending(conn: psycopg.Connection, sites: list[str]) -> list[DeadLetter]:
    """The pending dead letters of these sites (all sites when empty), oldest first."""
    return [DeadLetter(*row) for row in ledger.pending_dead_letters(conn, sites)]


def read_back(kafka: KafkaConfig, letter: DeadLetter,
              timeout: float = COPY_TIMEOUT_S) -> list[tuple[int, bytes | None]]:
    """The records of one dead letter, from its topic: (site topic offset, value) in order."""
    consumer = Consumer(client_config(kafka, **{
        "group.id": "tributary-dead-letters-replay", "enable.auto.commit": False}))
    out: dict[int, bytes | None] = {}
    try:
        consumer.assign([TopicPartition(letter.dead_letter_topic, 0, letter.dlt_first)])
        deadline = time.monotonic() + timeout
        position = letter.dlt_first
        while position <= letter.dlt_last:
            if time.monotonic() > deadline:
                raise DeadLetterError(f"dead-letter topic {letter.dead_letter_topic}: offsets "
                                      f"{position}..{letter.dlt_last} not read within "
                                      f"{timeout:.0f} s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                raise DeadLetterError(f"dead-letter topic {letter.dead_letter_topic}: "
                                      f"{msg.error()}")
            position = msg.offset() + 1
            head = {k: v.decode() for k, v in (msg.headers() or []) if v is not None}
            if head.get(H_SITE) != letter.site or head.get(H_TOPIC) != letter.topic or \
                    head.get(H_FIRST) != str(letter.first_offset):
                continue  # another dead letter written in between
            out[int(head[H_OFFSET])] = msg.value()  # a copy written twice: once each
    finally:
        consumer.close()
    if min(out, default=None) != letter.first_offset or \
            max(out, default=None) != letter.last_offset:
        raise DeadLetterError(
            f"site {letter.site}: the dead letter of {letter.topic}[{letter.partition}] offsets "
            f"{letter.first_offset}..{letter.last_offset} is not whole in "
            f"{letter.dead_letter_topic} (offsets {letter.dlt_first}..{letter.dlt_last})")
    return sorted(out.items())


def mark_replayed(conn: psycopg.Connection, letter: DeadLetter) -> None:
    ledger.mark_dead_letter_replayed(conn, letter.site, letter.topic, letter.partition,
                                     letter.first_offset)


def reapply(config: Config, sites: list[str],
            progress: Callable[[DeadLetter, str | None], None]) -> tuple[int, int]:
    """Apply the pending dead letters of ``sites`` again, each whole in a cloud transaction of
    its own; one that fails again stays pending (``progress`` is told why). Returns (applied,
    failed)."""
    from sinks.applier import Applier
    from sinks.batcher import SiteStream, plan
    from sinks.record_reader import RecordReader
    from sinks.tables import CloudTables

    sink = config.need_sink()
    reader = RecordReader(config.kafka)
    applied = failed = 0
    with psycopg.connect(sink.dsn) as conn:
        letters = pending(conn, sites)
        conn.rollback()
        applier = Applier(conn, CloudTables(sink.site_column, sink.tables, sink.create_tables,
                                            sink.dsn), frozenset(
            name for name, mode in sink.table_modes.items() if mode == "append"))
        for letter in letters:
            try:
                stream = SiteStream(letter.site, None)
                for offset, value in read_back(config.kafka, letter):
                    reader.feed(stream, value, f"{letter.dead_letter_topic} ({letter.topic}"
                                               f"[{letter.partition}]@{offset})", offset)
                changes, tx, _ = stream.take_done()
                if tx is None:
                    raise DeadLetterError(f"site {letter.site}: dead letter at "
                                          f"{letter.topic}@{letter.first_offset} holds no "
                                          "complete transaction")
                with conn.transaction():
                    applier.apply(letter.site, plan(changes))
                    mark_replayed(conn, letter)
                applier.transaction_ended()
                applied += 1
                progress(letter, None)
            except (TributaryError, psycopg.Error) as exc:
                if isinstance(exc, psycopg.OperationalError):
                    raise
                applier.forget()
                failed += 1
                progress(letter, f"{type(exc).__name__}: {exc}".strip())
    return applied, failed
