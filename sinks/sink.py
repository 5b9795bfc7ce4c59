"""The cloud daemon: site topics -> whole site transactions -> one cloud transaction per batch.

Loop: consume records, follow each site's partition with a :class:`SiteStream`, and every
``batch_max_ms`` (or ``batch_max_changes``) apply the complete transactions of every site in one
cloud transaction that also records offsets and per-site progress. A transaction bigger than
``batch_max_changes`` is applied in parts inside a cloud transaction of its own while the other
partitions wait (paused), so memory stays bounded whatever the transaction size.

Offsets live in the cloud database, not in Kafka: on every (re)assignment the consumer is moved
to the stored offsets, so a rebalance or a crash resumes exactly where the cloud is.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from cdc.core import ledger
from cdc.core.config import Config
from cdc.core.errors import (ApplyError, ConnectionLost, DecodeError, Family, GroupStuck,
                             classify)
from cdc.core.lsn import format_lsn
from cdc.runtime.failpoints import failpoint
from cdc.runtime.health import Health
from cdc.runtime.metrics import OP_NAMES, sink_metrics
from cdc.runtime.pgsession import pinned_conninfo
from cdc.runtime.retry import run_with_backoff
from cdc.runtime.topics import client_config, kafka_error_logger
from sinks import dead_letters
from sinks.applier import Applier
from sinks.batcher import DeadTx, SiteStream, plan
from sinks.group_watch import STATS_INTERVAL_MS, GroupState, GroupWatch
from sinks.record_reader import RecordReader, UnreadableChange
from sinks.tables import CloudTables
from sinks.worker import ApplyWorker, Part, SiteFailed, forget_uncommitted

log = logging.getLogger(__name__)

PROGRESS_LOG_S = 30.0
CONSUME_BATCH = 2000  # records asked of the consumer per loop turn


@dataclass
class SinkStats:
    transactions: int = 0
    changes: int = 0
    batches: int = 0
    skipped: int = 0
    last_commit_ts: dict[str, int] = field(default_factory=dict)


@dataclass
class _SinkSession:
    """What one sink session holds; the next one starts again from the cloud's ledger."""

    worker: ApplyWorker  # the cloud connection's one owner
    group_watch: GroupWatch
    consumer: Consumer
    streams: dict[tuple[str, int], SiteStream] = field(default_factory=dict)  # by partition
    big: tuple[str, int] | None = None  # partition whose big transaction is open
    rewound: set[tuple[str, int]] = field(default_factory=set)  # read again from the cloud
    group_checked: float = 0.0  # when the broker was last asked whether site topics wait
    #: the session is ending and its worker is gone: what it read and did not apply is read
    #: again by the next session, so the revoke that closing the consumer brings applies nothing
    closing: bool = False


class Sink:
    """Consumes every site topic and applies it to the cloud database until ``stop`` is set."""

    def __init__(self, config: Config, stop: threading.Event | None = None) -> None:
        self.config = config
        self.cfg = config.need_sink()
        self.kafka = config.kafka
        self.stop = stop or threading.Event()
        self.stats = SinkStats()
        self.reader = RecordReader(config.kafka)
        self.metrics = sink_metrics()
        self.health = Health()
        self.state: _SinkSession | None = None  # the session's, while one runs

    def refresh_metrics(self) -> None:
        """At scrape time: lag of each site = now - commit time of its last applied tx."""
        now = time.time()
        for site, ts in list(self.stats.last_commit_ts.items()):
            self.metrics.lag_seconds.labels(site).set(max(0.0, now - ts / 1e6))

    def _observe_consumer_lag(self) -> None:
        """Records on each partition after what the cloud has applied (one broker round trip
        per partition, every 15 s)."""
        consumer = self.state.consumer
        for (topic, partition), stream in list(self.state.streams.items()):
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                         timeout=2)
                position = consumer.position([TopicPartition(topic, partition)])[0].offset
            except KafkaException:
                continue
            applied = stream.next_offset if stream.next_offset is not None else position
            if applied is not None and applied >= 0:
                self.metrics.consumer_lag.labels(topic, str(partition)).set(max(0, high - applied))

    # -- lifecycle -----------------------------------------------------------------------------
    def run(self) -> None:
        run_with_backoff(self.session, self.stop, "sink session")

    def session(self) -> None:
        cfg = self.cfg
        self.health.beat()  # a new attempt: alive, even while a server stays away (backoff)
        try:
            conn = psycopg.connect(pinned_conninfo(cfg.dsn), autocommit=True)
        except psycopg.OperationalError as exc:
            raise ConnectionLost(f"cannot connect to the cloud database: {exc}".strip()) from exc
        self.state = None
        try:
            with conn.transaction():
                ledger.ensure_schema(conn)
            conn.autocommit = False
            applier = Applier(conn, CloudTables(
                cfg.site_column, cfg.tables, cfg.create_tables, cfg.dsn), frozenset(
                name for name, mode in cfg.table_modes.items() if mode == "append"))
            if cfg.dead_letter_topic:
                dead_letters.ensure(self.kafka, cfg.dead_letter_topic)
            consumer = Consumer(client_config(self.kafka, **{
                "group.id": cfg.group_id, "enable.auto.commit": False,
                "auto.offset.reset": "earliest", "enable.partition.eof": False,
                "topic.metadata.refresh.interval.ms": 5000,
                "fetch.max.bytes": 52_428_800, "queued.max.messages.kbytes": 65_536,
                # site topics have one partition each: "range" gives every partition 0 to
                # one member, so other replicas idle; round robin spreads the sites (range
                # stays listed so a group with older replicas still agrees on one)
                "partition.assignment.strategy": "roundrobin,range",
                "statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": self._on_stats,
                "error_cb": kafka_error_logger(log)}))
            # from here on the cloud connection is the worker's alone (sinks.worker)
            self.state = _SinkSession(ApplyWorker(conn, applier, self._apply_batch),
                                      GroupWatch(time.monotonic(), cfg.group_stuck_after_s),
                                      consumer)
            consumer.subscribe([self.kafka.site_topic_pattern], on_assign=self._on_assign,
                               on_revoke=self._on_revoke, on_lost=self._on_lost)
            log.info("consuming", extra={"pattern": self.kafka.site_topic_pattern,
                                         "group": cfg.group_id})
            self.state.worker.start()
            self.health.set_ready(True)
            self.metrics.consuming.set(1)
            self._loop()
            self._flush()
            self._drain()
        finally:
            self.health.set_ready(False, "not consuming (reconnecting or stopping)")
            self.metrics.consuming.set(0)
            if self.state is not None:
                self.state.closing = True
                self.state.worker.close()
                try:
                    self.state.consumer.close()
                except (KafkaException, RuntimeError):
                    pass
            conn.close()

    # -- assignment ----------------------------------------------------------------------------
    def _on_stats(self, stats_json: str) -> None:
        self.state.group_watch.observe(GroupState.from_stats(stats_json), time.monotonic())

    def _check_group(self, now: float) -> None:
        """Replace a consumer that has been outside its group too long while site topics wait
        (see :mod:`sinks.group_watch`); one metadata request, at most every 15 s, and only then."""
        watch = self.state.group_watch
        if not watch.overdue(now) or now - self.state.group_checked < watch.stuck_after_s / 4:
            return
        self.state.group_checked = now
        # a client of its own: the consumer's connections may be what is stuck
        admin = AdminClient(client_config(self.kafka))
        try:
            topics = admin.list_topics(timeout=5).topics
        except KafkaException as exc:
            log.warning("the Kafka consumer is outside its group and the broker does not answer; "
                        "asked again later", extra={"group": self.cfg.group_id,
                                                    "out_for_s": round(watch.out_for(now)),
                                                    "state": watch.describe(),
                                                    "error": str(exc)})
            return  # the broker is away: librdkafka reconnects by itself
        waiting = sorted(t for t in topics if self.kafka.site_of_topic(t) is not None)
        if waiting:
            raise GroupStuck(
                f"the Kafka consumer has been outside group {self.cfg.group_id!r} for "
                f"{watch.out_for(now):.0f} s ({watch.describe()}) while {len(waiting)} site "
                f"topic(s) wait ({', '.join(waiting[:5])}{', ...' if len(waiting) > 5 else ''});"
                " replacing it with a new consumer")

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        failpoint("sink.on_assign")
        self._drain()
        self._rollback()
        group = self.cfg.group_id
        assigned = [(tp.topic, tp.partition) for tp in partitions]
        assigned_sites = [s for s in (self.kafka.site_of_topic(tp.topic) for tp in partitions)
                          if s]

        def load(conn: psycopg.Connection, _: Applier) -> tuple[Any, Any, Any, Any]:
            ledger.register_partitions(conn, group, assigned)
            progress = (ledger.load_offsets(conn, group), ledger.load_sites(conn),
                        ledger.load_earlier(conn), ledger.load_replays(conn))
            ledger.clear_stopped(conn, assigned_sites)
            conn.commit()
            return progress

        offsets, sites, earlier, replays = self.state.worker.call(load)
        for tp in partitions:
            site = self.kafka.site_of_topic(tp.topic)
            tp.offset = offsets.get((tp.topic, tp.partition), OFFSET_BEGINNING)
            if site is not None:
                stream = SiteStream(site, sites.get(site), replays.get(site), earlier.get(site))
                stream.resume_at(tp.offset)
                self.state.streams[(tp.topic, tp.partition)] = stream
                if site in replays:
                    log.info("replay: applying again up to a commit LSN", extra={
                        "site": site, "until_lsn": format_lsn(replays[site][0]),
                        "tables": sorted(replays[site][1] or []) or "all"})
                self.metrics.site_stopped.labels(site).set(0)
                applied = sites.get(site)
                if applied is not None and site not in self.stats.last_commit_ts:
                    self.stats.last_commit_ts[site] = applied.commit_ts
            log.info("assigned", extra={"topic": tp.topic, "partition": tp.partition,
                                        "offset": tp.offset})
        consumer.assign(partitions)
        consumer.resume(partitions)  # librdkafka keeps a pause across a rebalance; we forgot it

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The group gave the partitions away without asking (this replica was frozen or cut
        off): what it holds is another replica's to apply now, so nothing more is flushed (a
        batch already with the worker meets the fence in the cloud)."""
        self._on_revoke(consumer, partitions, lost=True)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition],
                   lost: bool = False) -> None:
        failpoint("sink.on_revoke")
        if not self.state.closing:
            if self.state.big is None and not lost:
                self._flush()  # keep the whole transactions already read; the rest is read again
            self._drain()
        self._rollback()
        for tp in partitions:
            self.state.streams.pop((tp.topic, tp.partition), None)
        log.info("partitions lost" if lost else "partitions revoked",
                 extra={"topics": sorted({tp.topic for tp in partitions})})
        try:
            consumer.unassign()
        except KafkaException:
            pass

    def _forget_uncommitted(self) -> None:
        """Roll the cloud transaction back; the applier forgets what it prepared in it."""
        if self.state is not None:
            self.state.worker.call(forget_uncommitted)

    def _rollback(self) -> None:
        """Forget everything not committed; the stored offsets are where we resume."""
        self._forget_uncommitted()
        self.state.streams.clear()
        self.state.big = None

    # -- records -------------------------------------------------------------------------------
    def _ingest(self, msg: Any) -> None:
        key = (msg.topic(), msg.partition())
        stream = self.state.streams.get(key)
        if stream is None:
            return  # not ours (anymore)
        offset = msg.offset()
        if stream.expect_offset is not None:
            stream.first_record(offset)
        stream.read_offset = offset
        value = msg.value()
        if value is None:
            stream.other(offset)
            return
        where = f"{msg.topic()}[{msg.partition()}]@{offset}"
        kind, rec = self.reader.decode(value, where)
        if kind == "change":
            change, site = rec
            if site != stream.site_id:
                raise ApplyError(f"{where}: event of site {site!r} on the topic of site "
                                 f"{stream.site_id!r}; refusing it")
            stream.change(change, offset)
            return
        if kind == "begin":
            if rec["site"] != stream.site_id:
                raise ApplyError(f"{where}: transaction of site {rec['site']!r} on the topic of "
                                 f"site {stream.site_id!r}; refusing to apply it")
            if stream.begin(rec, offset):
                log.warning("transaction cut short by a source restart; it follows again in full",
                            extra={"site": stream.site_id, "offset": offset})
            if stream.held == 1:
                log.error("delivery gap: a transaction before this one never arrived whole; it "
                          "and the ones after it are held until the source sends them again",
                          extra={"site": stream.site_id, "offset": offset,
                                 "commit_lsn": format_lsn(rec["commit_lsn"]),
                                 "after_lsn": format_lsn(rec["prev_end_lsn"])})
                if self.state.big == key:  # its first part is in the open cloud transaction
                    self._drain()
                    self._drain_connection_of_big()
        elif kind == "position":  # the site's WAL position: lag in bytes
            stream.site_lsn = rec["server_lsn"]
            stream.other(offset)
        elif kind == "commit":
            stream.commit(rec, offset)
            if stream.dead is not None:
                self._bury(key, stream)
            elif stream.careful_until is not None and stream.done_tx is not None:
                if offset >= stream.careful_until:
                    stream.careful_until = None
                self._flush([key])  # alone: if it fails, the failing transaction is known
            if stream.open is None and self.state.big == key:
                self._finish_big(key, stream)
        else:
            stream.other(offset)

    # -- applying ------------------------------------------------------------------------------
    def _loop(self) -> None:
        cfg = self.cfg
        consumer = self.state.consumer
        batch_started = last_log = last_lag = time.monotonic()
        beat = self.health.beat
        while not self.stop.is_set():
            beat()
            msgs = consumer.consume(num_messages=CONSUME_BATCH, timeout=0.05)
            if not msgs:
                self._check_group(time.monotonic())
            self.state.rewound.clear()
            for msg in msgs:
                if self.state.rewound and (msg.topic(), msg.partition()) in self.state.rewound:
                    continue  # read before the rewind: it comes again
                err = msg.error()
                if err is not None:
                    if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                        continue
                    raise KafkaException(err)
                try:
                    self._ingest(msg)
                    failpoint("sink.after_ingest")
                except Exception as exc:  # unreadable or refused: that record's site stops
                    key = (msg.topic(), msg.partition())
                    stream = self.state.streams.get(key)
                    if stream is None or classify(exc, reading_record=True) is not Family.SITE:
                        raise
                    where = f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"
                    if isinstance(exc, UnreadableChange) and self.cfg.dead_letter_topic and \
                            stream.open is not None:
                        self._kill_open(key, stream, f"{where}: {exc}", unreadable=True)
                        continue
                    if classify(exc) is not Family.SITE:  # bytes that are not a record of ours
                        exc = DecodeError(f"{where}: the record does not decode "
                                          f"({type(exc).__name__}: {exc})")
                    self._stop_site(key, exc)
            self._collect()
            if self.state.big is not None:
                stream = self.state.streams.get(self.state.big)
                if stream is not None and stream.open is not None and \
                        len(stream.open.changes) >= cfg.batch_max_changes:
                    self._apply_part(stream)
                continue
            pending = sum(s.pending for s in self.state.streams.values())
            now = time.monotonic()
            # apply when the batch is full, when it has waited batch_max_ms, or as soon as the
            # topics are drained (fewer records than asked for) and the worker is idle: a light
            # load is applied at once; a backlog, or a busy worker, still makes big batches
            drained = len(msgs) < CONSUME_BATCH and self.state.worker.idle() and any(
                s.done_tx is not None for s in self.state.streams.values())
            if pending >= cfg.batch_max_changes or now - batch_started >= cfg.batch_max_ms / 1000 \
                    or drained:
                big = next((k for k, s in self.state.streams.items()
                            if s.open is not None and len(s.open.changes) >= cfg.batch_max_changes),
                           None)
                self._flush()
                batch_started = time.monotonic()
                if big is not None:
                    self._start_big(big)
                if batch_started - last_log >= PROGRESS_LOG_S:
                    last_log = batch_started
                    self._log_progress()
                if batch_started - last_lag >= 15.0:
                    last_lag = batch_started
                    self._observe_consumer_lag()

    def _log_progress(self) -> None:
        stats = self.stats
        sites = {s.site_id: format_lsn(s.applied.commit_lsn) if s.applied else None
                 for s in self.state.streams.values()}
        log.info("progress", extra={"transactions": stats.transactions, "changes": stats.changes,
                                    "batches": stats.batches, "applied_commit_lsn": sites,
                                    "skipped": sum(s.skipped for s in self.state.streams.values()),
                                    "group": self.state.group_watch.describe()})

    def _flush(self, keys: list[tuple[str, int]] | None = None) -> None:
        """Hand every complete transaction of every site (of ``keys`` only, when given) to the
        worker: one cloud transaction."""
        batch = []
        for (topic, partition), stream in self.state.streams.items():
            if stream.done_tx is None and stream.next_offset is None:
                continue
            if keys is not None and (topic, partition) not in keys:
                continue
            commit_ts = stream.done_commit_ts
            expected = stream.cloud_offset
            first, txs, tables = (stream.done_first_offset, stream.done_count,
                                  tuple(sorted(stream.done_tables)))
            changes, tx, offset = stream.take_done()
            batch.append(Part(topic, partition, stream, plan(changes), len(changes), tx, offset,
                               ops=Counter(c.op for c in changes), commit_ts=commit_ts,
                               replaying=stream.had_replay, expected=expected,
                               earlier=dict(stream.earlier), first_offset=first, txs=txs,
                               tables=tables))
        if batch:
            self.state.worker.submit(batch)
        self._collect()

    def _apply_batch(self, batch: list[Part], conn: psycopg.Connection,
                     applier: Applier) -> None:
        """In the worker: the batch's rows and progress, one cloud transaction."""
        started = time.monotonic()
        try:
            for part in sorted(batch, key=lambda p: (p.topic, p.partition)):  # one lock order
                ledger.claim(conn, self.cfg.group_id, part.topic, part.partition, part.expected)
            for part in batch:
                if part.steps:
                    try:
                        applier.apply(part.stream.site_id, part.steps)
                    except Exception as exc:  # this site's data: stop the site, not the sink
                        if classify(exc) is Family.SITE:
                            raise SiteFailed(part, exc) from exc
                        raise
                if part.tx is not None:
                    ledger.save_site(conn, part.stream.site_id, part.tx, part.stream.site_lsn,
                                     part.earlier)
                    if part.replaying:
                        ledger.finish_replay(conn, part.stream.site_id, part.tx.commit_lsn)
                if part.next_offset is not None:
                    ledger.save_offset(conn, self.cfg.group_id, part.topic, part.partition,
                                       part.next_offset)
            if not all(part.final for part in batch):
                return  # more of a large transaction follows in this cloud transaction
            conn.commit()
            failpoint("sink.after_cloud_commit")  # offsets and site progress are in that commit
            done = time.time()
            self.metrics.batch_seconds.observe(time.monotonic() - started)
            for part in batch:
                part.committed_at = done
        except BaseException:
            try:
                conn.rollback()
            except psycopg.Error:
                pass
            applier.forget()
            raise
        applier.transaction_ended()

    def _collect(self) -> bool:
        """Note the batches the worker committed; raise what it failed on.

        Returns True when a site failed and the batches after it were submitted again.
        """
        stats = self.stats
        while True:
            try:
                batch = self.state.worker.finished.get_nowait()
            except queue.Empty:
                break
            m = self.metrics
            for part in batch:
                part.stream.committed(part.tx)
                site = part.stream.site_id
                if part.tx is not None:
                    stats.last_commit_ts[site] = part.tx.commit_ts
                    stats.transactions += 1
                    m.last_applied_lsn.labels(site).set(part.tx.commit_lsn)
                    if part.stream.site_lsn is not None:
                        m.lag_bytes.labels(site).set(
                            max(0, part.stream.site_lsn - part.tx.end_lsn))
                    m.last_applied_commit_ts.labels(site).set(part.tx.commit_ts / 1e6)
                    m.lag_seconds.labels(site).set(max(0.0, time.time() - part.tx.commit_ts / 1e6))
                if part.replaying and part.stream.replay_until is None:
                    part.stream.had_replay = False  # its tributary.replays row is deleted
                for op, n in part.ops.items():
                    m.rows_applied.labels(site, OP_NAMES.get(op, op)).inc(n)
                for ts in part.commit_ts:
                    m.end_to_end_seconds.observe(max(0.0, part.committed_at - ts / 1e6))
                stats.changes += part.changes
            stats.batches += 1
        self.state.worker.check()
        if self.state.worker.failed is None:
            return False
        self.state.worker.drain()  # every queued batch is held now
        failed, held = self.state.worker.failed, self.state.worker.held
        self.state.worker.failed, self.state.worker.held = None, []
        jobs = self._part_failed(failed.part, failed.cause, [failed.batch, *held])
        for job in jobs:
            if job:
                self.state.worker.submit(job)
        return True

    def _stop_site(self, key: tuple[str, int], cause: BaseException) -> None:
        """Stop one site's stream: nothing of it after the failed change is applied or skipped
        (its offset stays where the cloud is), the other sites go on. Cleared by a restart."""
        stream = self.state.streams.pop(key, None)
        site = stream.site_id if stream else key[0]
        self.metrics.site_stopped.labels(site).set(1)
        try:
            with psycopg.connect(pinned_conninfo(self.cfg.dsn), autocommit=True) as other:
                ledger.mark_stopped(other, site, f"{type(cause).__name__}: {cause}")
        except psycopg.Error as exc:  # the log line below still says it
            log.warning("could not record the stopped site", extra={"site": site,
                                                                    "error": str(exc)})
        log.error(f"site {site} stopped: {cause}", extra={
            "site": site, "topic": key[0], "partition": key[1],
            "error_type": type(cause).__name__})
        try:
            self.state.consumer.pause([TopicPartition(key[0], key[1])])
        except KafkaException:
            pass
        if self.state.big == key:
            self._drain_connection_of_big()

    # -- dead letters ------------------------------------------------------------------------
    def _part_failed(self, part: Part, cause: Exception,
                     jobs: list[list[Part]]) -> list[list[Part]]:
        """One site's part of a batch failed (the batch was rolled back): stop the site, or,
        with dead letters on, send the failing transaction there. Returns the batches to
        submit again, in order (without what cannot apply now)."""
        key = (part.topic, part.partition)
        stream = self.state.streams.get(key)
        mine = [p for job in jobs for p in job if (p.topic, p.partition) == key]
        drop: list[Part] = mine  # the site's parts not to submit again
        if not self.cfg.dead_letter_topic:
            self._stop_site(key, cause)
        elif stream is None or stream is not part.stream:
            pass  # stopped, or read again from the cloud's offset meanwhile
        elif part.final and part.txs == 1:
            self._bury_part(key, stream, part, str(cause))
            drop = [part]
        elif not part.final:  # a part of a large transaction
            final = next((p for p in mine if p.final), None)
            if final is None:  # its Commit is still to come
                self._kill_open(key, stream, str(cause))
            else:  # read whole already: its last part waits among the held batches
                self._bury_part(key, stream, final, str(cause))
                drop = mine[:mine.index(final) + 1]
        else:  # which of its transactions failed? read them again, one at a time
            self._rewind(key, stream, part.expected)
        dropped = {id(p) for p in drop}
        return [[p for p in job if id(p) not in dropped] for job in jobs]

    def _kill_open(self, key: tuple[str, int], stream: SiteStream, reason: str,
                   unreadable: bool = False) -> None:
        """The open transaction cannot be applied: it goes to the dead letters at its Commit
        (what a large one already applied in this cloud transaction is rolled back)."""
        if unreadable:
            stream.unreadable_change(reason)
        else:
            stream.kill_open(reason)
        log.error("site transaction cannot be applied; it goes to the dead letters whole",
                  extra={"site": stream.site_id, "xid": stream.open.xid if stream.open else None,
                         "reason": reason})
        if self.state.big == key:
            self._drain()
            self._drain_connection_of_big()

    def _bury(self, key: tuple[str, int], stream: SiteStream) -> None:
        """A dead transaction's Commit was read: what precedes it applies first, then it goes to
        the dead-letter topic and the cloud moves past it."""
        self._flush()
        self._drain()
        dead = stream.dead
        if dead is None or self.state.streams.get(key) is not stream:
            return  # the site stopped or was read again meanwhile
        self._dead_letter(key, stream, dead, stream.cloud_offset, dead.last_offset + 1)
        stream.buried(dead)

    def _bury_part(self, key: tuple[str, int], stream: SiteStream, part: Part,
                   reason: str) -> None:
        """A part of one transaction failed: that transaction goes to the dead letters."""
        assert part.tx is not None and part.first_offset is not None
        assert part.next_offset is not None
        dead = DeadTx(part.first_offset, part.next_offset - 1, part.tx, part.tables, reason)
        self._dead_letter(key, stream, dead, part.expected, part.next_offset)
        stream.committed(part.tx)

    def _dead_letter(self, key: tuple[str, int], stream: SiteStream, dead: DeadTx,
                     expected: int, next_offset: int) -> None:
        """Copy the transaction's records to the dead-letter topic, then, in one cloud
        transaction, record it and move the site and the partition past it."""
        topic, partition = key
        dlt = self.cfg.dead_letter_topic
        assert dlt is not None
        offsets = dead_letters.copy_to_topic(self.kafka, self.cfg.group_id, stream.site_id,
                                             topic, partition, dead, dlt, self.stop.is_set)
        group, earlier = self.cfg.group_id, dict(stream.earlier)

        def move_past(conn: psycopg.Connection, applier: Applier) -> None:
            try:
                ledger.claim(conn, group, topic, partition, expected)
                dead_letters.record(conn, stream.site_id, topic, partition, dead, dlt, offsets)
                ledger.save_site(conn, stream.site_id, dead.tx, stream.site_lsn, earlier)
                ledger.save_offset(conn, group, topic, partition, next_offset)
                conn.commit()
            except BaseException:
                forget_uncommitted(conn, applier)
                raise

        self.state.worker.call(move_past)
        self.metrics.dead_letters.labels(stream.site_id).inc()
        log.error(f"site {stream.site_id}: transaction sent to dead-letter topic {dlt}: "
                  f"{dead.reason}", extra={
                      "site": stream.site_id, "topic": topic, "partition": partition,
                      "first_offset": dead.first_offset, "last_offset": dead.last_offset,
                      "commit_lsn": format_lsn(dead.tx.commit_lsn), "xid": dead.tx.xid,
                      "tables": list(dead.tables), "dead_letter_offsets": list(offsets)})

    def _rewind(self, key: tuple[str, int], stream: SiteStream, offset: int) -> None:
        """Read a site again from what the cloud holds, one transaction per cloud transaction
        up to where it had read, so the one that cannot be applied is found alone."""
        def load(conn: psycopg.Connection, _: Applier) -> tuple[Any, Any, Any]:
            progress = (ledger.load_sites(conn), ledger.load_earlier(conn),
                        ledger.load_replays(conn))
            conn.rollback()
            return progress

        sites, earlier, replays = self.state.worker.call(load)
        site = stream.site_id
        again = SiteStream(site, sites.get(site), replays.get(site), earlier.get(site))
        again.resume_at(offset)
        again.careful_until = stream.read_offset
        again.site_lsn = stream.site_lsn
        self.state.streams[key] = again
        self.state.rewound.add(key)
        log.warning("a batch of the site failed; reading it again one transaction at a time",
                    extra={"site": site, "from_offset": offset, "until_offset": stream.read_offset})
        self.state.consumer.seek(TopicPartition(key[0], key[1],
                                          offset if offset >= 0 else OFFSET_BEGINNING))

    def _drain(self) -> None:
        """Wait until every batch handed to the worker is committed (or failed)."""
        if self.state is not None:
            while True:
                self.state.worker.drain()
                if not self._collect():
                    return

    def _drain_connection_of_big(self) -> None:
        """The site of an open large transaction stopped: drop its parts, resume the others."""
        self._forget_uncommitted()
        self._resume_others()

    def _start_big(self, key: tuple[str, int]) -> None:
        """A transaction too big to hold: apply it in parts, the other partitions paused."""
        self._drain()
        self.state.big = key
        others = [TopicPartition(t, p) for (t, p) in self.state.streams if (t, p) != key]
        if others:
            self.state.consumer.pause(others)
        log.info("applying a large transaction in parts",
                 extra={"site": self.state.streams[key].site_id})
        self._apply_part(self.state.streams[key])

    def _apply_part(self, stream: SiteStream) -> None:
        """Hand the worker the next part of a large transaction (it keeps the transaction open)."""
        changes = stream.take_open()
        failpoint("sink.apply_part")
        if changes:
            topic, partition = next(k for k, s in self.state.streams.items() if s is stream)
            self.state.worker.submit([Part(topic, partition, stream, plan(changes), len(changes),
                                      None, None, final=False,
                                      ops=Counter(c.op for c in changes),
                                      expected=stream.cloud_offset)])
        self._collect()

    def _finish_big(self, key: tuple[str, int], stream: SiteStream) -> None:
        self.state.big = None
        self._flush()
        self._resume_others()

    def _resume_others(self) -> None:
        self.state.big = None
        others = [TopicPartition(t, p) for (t, p) in self.state.streams]
        if others:
            self.state.consumer.resume(others)

