"""The site daemon: replication slot -> change events -> Kafka, confirming only what Kafka holds.

One session: connect, make sure the publication, slot and topic exist, stream from the slot's
confirmed LSN, produce every record, and report to the slot (standby status ``flush``) the end
LSN of the last transaction whose records are all acknowledged. Any lost connection or delivery
error ends the session; :meth:`Source.run` starts a new one with backoff, which streams again
from the slot's confirmed point (the sink skips what it has already applied).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import psycopg


from cdc.source import initial_copy
from cdc.core.config import Config
from cdc.core.errors import ConnectionLost, DeliveryError, ReplicationError
from cdc.core.lsn import format_lsn
from cdc.source.dropped import DroppedRelations
from cdc.source.event_builder import EventBuilder, SiteIdentity
from cdc.source.pgoutput import Commit, Message, decode_frame, decode_message
from cdc.source.producer import EventProducer
from cdc.source.progress import SourceProgress
from cdc.runtime.registry import Framing, RegistryFraming, SelfContained, registry_client
from cdc.runtime.duties import Every, Heartbeat
from cdc.runtime.failpoints import failpoint
from cdc.runtime.health import Health
from cdc.runtime.metrics import source_metrics
from cdc.runtime.pgsession import pinned_conninfo
from cdc.runtime.retry import run_with_backoff
from cdc.runtime.topics import ensure_topic
from cdc.runtime.schema_store import SchemaPublisher
from cdc.source.catalog import (ChunkCatalog, column_lookup, compressed_batch_delete_on,
                                dropped_relations, hypertables, primary_key_lookup,
                                timescaledb_version, type_lookup, unchanged_lookup)
from cdc.source.publication import (SiteTable, ensure_publication, list_tables, matches,
                                    publication_tables)
from cdc.source.slot import (SlotState, create_slot_exporting, ensure_slot, record_creation,
                             slot_figures, slot_state, unused_since_creation)
from cdc.source.selection import TableSelection
from cdc.source.snapshot import PREFIX as SNAPSHOT_PREFIX
from cdc.source.snapshot import Snapshots, TableKey
from cdc.source.stream import ReplicationStream, identify_system, now_pg_us, open_replication
from cdc.source.timescale import TimescaleFilter
from cdc.source.topic_tail import last_published, wal_went_back

log = logging.getLogger(__name__)

XLOGDATA, KEEPALIVE = ord("w"), ord("k")
XLOG_HEADER = 25  # 'w' + wal_start + wal_end + send_time
PROGRESS_LOG_S = 30.0
#: how often the source asks the site which relations it describes were dropped (cdc.source.dropped)
RELATION_SWEEP_S = 60.0
#: logical message of an idle site's heartbeat transaction (it carries no change)
HEARTBEAT_PREFIX = "tributary-heartbeat"


@dataclass
class SourceStats:
    """What the session has done; read by progress lines and metrics."""

    messages: int = 0
    transactions: int = 0
    records: int = 0
    confirmed_lsn: int = 0
    sessions: int = 0


@dataclass
class _Session:
    """What one source session holds open; closed together at its end."""

    conn: psycopg.Connection  # the site, autocommit: catalog reads, progress, heartbeats
    repl: psycopg.Connection | None = None  # the replication connection
    snap: psycopg.Connection | None = None  # the initial copy's snapshot transaction
    snapshots: Snapshots | None = None
    producer: EventProducer | None = None
    system: Any = None  # IDENTIFY_SYSTEM's answer
    slot: SlotState | None = None
    fresh_slot: bool = False  # created by this session
    started_over: bool = False  # an initial copy dropped its slot to start over

    def close_snapshot(self) -> None:
        if self.snap is not None:
            self.snap.close()
            self.snap = None

    def close(self) -> None:
        if self.snapshots is not None:
            self.snapshots.close()
        self.conn.close()
        self.close_snapshot()
        if self.repl is not None:
            self.repl.close()


class Source:
    """Streams one site into Kafka until ``stop`` is set."""

    def __init__(self, config: Config, stop: threading.Event | None = None) -> None:
        self.config = config
        self.site = config.need_site()
        self.stop = stop or threading.Event()
        self.stats = SourceStats()
        self._named: dict[str, float] = {}  # table -> when its problem was last logged
        self._timescaledb: str | None = None  # the site's TimescaleDB version, if any
        self._chunks_published = False
        self._usable: list[tuple[str, str]] = []  # selected tables that can be replicated
        self._joined: list[tuple[str, str]] = []  # of those, the ones added at this start
        self.metrics = source_metrics(self.site.id)
        self.health = Health()
        self._over_limit_logged = -1e9
        self._server_lsn = 0  # the site's WAL position at the last slot query

    def run(self) -> None:
        """Sessions with exponential backoff on transient failures, until stopped."""
        run_with_backoff(self.session, self.stop, "source session")

    def _observe_slot(self, conn: psycopg.Connection) -> None:
        """Slot figures for the metrics; an alarm when the slot retains more WAL than allowed."""
        site, m = self.site, self.metrics
        figures = slot_figures(conn, site.slot_name)
        if figures is None:
            return
        lag, retained = figures.lag_bytes or 0, figures.retained_bytes or 0
        wal_status = figures.wal_status
        self._server_lsn = figures.server_lsn
        m.wal_lag_bytes.labels(site.id).set(lag)
        m.retained_wal_bytes.labels(site.id).set(retained)
        over = retained > site.max_retained_wal_bytes
        m.over_limit.labels(site.id).set(1 if over else 0)
        now = time.monotonic()
        if over and now - self._over_limit_logged >= 600:
            self._over_limit_logged = now
            log.warning("the slot retains more WAL than site.max_retained_wal_bytes: the site's "
                        "disk fills while the source lags (Kafka away, source stopped or slow); "
                        "if it reaches max_slot_wal_keep_size the slot is invalidated and the "
                        "site must be copied again", extra={
                            "site": site.id, "slot": site.slot_name, "retained_bytes": retained,
                            "limit_bytes": site.max_retained_wal_bytes,
                            "wal_status": wal_status})

    def _usable_tables(self, conn: psycopg.Connection) -> list[SiteTable]:
        """The tables site.tables selects that can be replicated; the others are named, with
        what to run, at most once every ten minutes each (adding one to the publication would
        make the site's own UPDATEs and DELETEs of it fail)."""
        usable = []
        now = time.monotonic()
        for table in list_tables(conn, self.site.tables, self.site.exclude):
            problem = table.identity_problem
            if problem is None:
                usable.append(table)
            elif now - self._named.get(table.qualified, -1e9) >= 600:
                self._named[table.qualified] = now
                log.error("table not replicated: " + problem,
                          extra={"site": self.site.id, "table": table.qualified})
        return usable

    def _prepare(self, conn: psycopg.Connection) -> None:
        site = self.site
        self._timescaledb = timescaledb_version(conn)
        if self._timescaledb:
            self._check_timescaledb(conn)
        usable = self._usable_tables(conn)
        ordinary, chunks = self._split(conn, usable)
        before = publication_tables(conn, site.publication)
        ensure_publication(conn, site.publication, ordinary,
                           selected=lambda name: matches(name, site.tables, site.exclude),
                           chunks=chunks)
        self._chunks_published = chunks
        # tables that join now: the rows they already hold need a snapshot (if the slot exists)
        self._joined = [(t.schema, t.name) for t in usable
                        if before is not None and (t.schema, t.name) not in before]
        self._usable = [(t.schema, t.name) for t in usable]

    def _split(self, conn: psycopg.Connection,
               tables: list[SiteTable]) -> tuple[list[SiteTable], bool]:
        """(ordinary tables, whether any hypertable is selected): a hypertable's rows are in its
        chunks, which the publication holds as a schema."""
        if not self._timescaledb:
            return tables, False
        hyper = hypertables(conn)
        ordinary = [t for t in tables if (t.schema, t.name) not in hyper]
        return ordinary, len(ordinary) < len(tables)

    def _check_timescaledb(self, conn: psycopg.Connection) -> None:
        """A DELETE of whole compressed batches is invisible to logical decoding while
        timescaledb.enable_compressed_direct_batch_delete is on (docs/design.md, "TimescaleDB"): say so, loudly."""
        if compressed_batch_delete_on(conn):
            log.error("timescaledb.enable_compressed_direct_batch_delete is on: deletes of whole "
                      "compressed batches will not reach the cloud; run ALTER DATABASE ... SET "
                      "timescaledb.enable_compressed_direct_batch_delete = off",
                      extra={"site": self.site.id, "timescaledb": self._timescaledb})

    def _refresh_tables(self, conn: psycopg.Connection,
                        snapshots: Snapshots | None = None) -> None:
        """Add tables created since the last look (and now selected) to the publication."""
        have = publication_tables(conn, self.site.publication)
        if have is None:
            return
        ordinary, chunks = self._split(conn, self._usable_tables(conn))
        new = [t for t in ordinary if (t.schema, t.name) not in have]
        if new or (chunks and not self._chunks_published):
            ensure_publication(conn, self.site.publication, new, chunks=chunks)
            self._chunks_published = self._chunks_published or chunks
            if snapshots is not None and new:
                snapshots.request([(t.schema, t.name) for t in new], "joined the replicated set")

    def session(self) -> None:
        """One session: prepare the site, open (or create) the slot, finish an initial copy,
        then stream until stopped. What it opens is closed at its end, whatever happens."""
        site = self.site
        self.stats.sessions += 1
        self.health.beat()  # a new attempt: alive, even while a server stays away (backoff)
        try:
            conn = psycopg.connect(pinned_conninfo(site.dsn), autocommit=True)
        except psycopg.OperationalError as exc:
            raise ConnectionLost(
                f"site {site.id}: cannot connect to the site database: {exc}") from exc
        s = _Session(conn)
        try:
            self._prepare(conn)
            self._open_slot(s)
            assert s.slot is not None and s.system is not None
            chunk_filter, hypertable_facts = self._timescale_filter(conn)
            if site.snapshot == "initial":
                s.snapshots = Snapshots(
                    conn, s.slot.name, site.snapshot_chunk_rows, hypertable_facts,
                    selected=lambda name: matches(name, site.tables, site.exclude),
                    dsn=pinned_conninfo(site.dsn))
                if self._joined and not s.fresh_slot:
                    s.snapshots.request(self._joined, "joined the replicated set")
            topic = self._check_topic(s.system)
            framing, publish_schema = self._framing(topic)
            builder = EventBuilder(
                SiteIdentity(site.id, s.system.system_id, s.system.timeline, s.slot.name,
                             s.system.database),
                type_lookup(conn), key_lookup=primary_key_lookup(conn),
                column_lookup=column_lookup(conn), framing=framing,
                hypertable_of=chunk_filter.hypertable_of if chunk_filter else None,
                start_lsn=s.slot.confirmed_flush_lsn,
                slot_created=unused_since_creation(conn, s.slot),
                unchanged_lookup=unchanged_lookup(conn))
            progress = SourceProgress(s.slot.confirmed_flush_lsn)
            s.producer = EventProducer(self.config.kafka, topic, progress, publish_schema)
            if site.snapshot == "initial" and not self._initial_copy(
                    s, builder, progress, hypertable_facts):
                log.info("stopped during the initial copy; it resumes at the next start",
                         extra={"site": site.id})
                return
            s.close_snapshot()
            self._stream_until_stopped(s, topic, builder, progress, chunk_filter)
        except DeliveryError:
            self.metrics.delivery_errors.labels(site.id).inc()
            if s.producer is not None:
                s.producer.abandon()
            raise
        finally:
            s.close()

    def _open_slot(self, s: _Session) -> None:
        """The replication connection and the slot: created when missing, with the initial
        copy planned first (a crash between the two resumes the copy, never forgets it)."""
        site, conn = self.site, s.conn
        s.repl = open_replication(site.dsn)
        s.system = identify_system(s.repl)
        fresh = slot_state(conn, site.slot_name) is None
        s.started_over = (not fresh and site.snapshot == "initial"
                          and initial_copy.start_over_if_needed(conn, site.id, site.slot_name))
        s.fresh_slot = fresh or s.started_over
        if s.fresh_slot and site.snapshot == "initial":
            # the rows the site holds at the slot's consistent point, read from its snapshot
            initial_copy.plan(conn, site.slot_name, self._usable)
            s.slot, exported = create_slot_exporting(s.repl, site.slot_name)
            s.snap = initial_copy.open_snapshot(site.dsn, exported)
        else:
            s.slot = ensure_slot(s.repl, conn, site.slot_name)
        if s.fresh_slot:
            record_creation(conn, s.slot)

    def _timescale_filter(self, conn: psycopg.Connection
                          ) -> tuple[TimescaleFilter | None, Callable[[TableKey], None] | None]:
        """On a TimescaleDB site: the filter that maps chunk changes to their hypertable and
        drops compression writes, and what a snapshot tells it of a hypertable it reads."""
        if not self._timescaledb:
            return None, None
        site = self.site
        chunks = ChunkCatalog(conn)
        tsf = TimescaleFilter(chunks, ranges=chunks.chunk_range,
                              selected=lambda name: matches(name, site.tables, site.exclude))

        def hypertable_facts(key: TableKey) -> None:  # a snapshot reads a hypertable
            tsf.remember(key.oid, chunks.hypertable(key.schema, key.table))
        return tsf, hypertable_facts

    def _check_topic(self, system: Any) -> str:
        """The site topic, created when missing; refused when its last transaction is past
        what the site's WAL holds (the site was restored from a backup)."""
        site, kafka = self.site, self.config.kafka
        topic = kafka.site_topic(site.id)
        ensure_topic(kafka, topic, kafka.topic_config)
        last = last_published(kafka, topic)
        log.info("topic tail", extra={
            "site": site.id, "topic": topic, "server_wal": format_lsn(system.xlogpos),
            "last_published_commit": format_lsn(last.commit_lsn) if last else None})
        went_back = wal_went_back(last, system.system_id, system.timeline, system.xlogpos)
        if went_back:
            raise ReplicationError(f"site {site.id}: {went_back}")
        return topic

    def _framing(self, topic: str) -> tuple[Framing, Callable[[Any], None] | None]:
        """How records name their schema, and who publishes a new one (None: the registry)."""
        kafka = self.config.kafka
        if kafka.schema_registry_url:  # Confluent wire format: the registry holds schemas
            return RegistryFraming(registry_client(kafka), topic), None
        # self-contained: schemas in the compacted schema topic, acked before use
        return SelfContained(), SchemaPublisher(kafka).publish

    def _initial_copy(self, s: _Session, builder: EventBuilder, progress: SourceProgress,
                      hypertable_facts: Callable[[TableKey], None] | None) -> bool:
        """Finish the initial copy, if one is owed; False when stopped before its end."""
        site, slot = self.site, s.slot
        assert slot is not None and s.producer is not None
        copy = initial_copy.InitialCopy(s.conn, slot.name, site.snapshot_chunk_rows,
                                        slot.confirmed_flush_lsn, hypertable_facts)
        if not copy.pending():
            return True
        self.health.set_ready(False, "initial copy under way")
        if s.snap is None:  # resumed: the exported snapshot died with its session
            log.warning("initial copy resumed: the rest is read as the site is now; "
                        "the stream brings it back to each later state",
                        extra={"site": site.id, "slot": slot.name})
            s.snap = initial_copy.open_snapshot(site.dsn, None)
        if not copy.run(s.snap, builder, s.producer, progress, self.stop,
                        on_chunk=self.health.beat, started_over=s.started_over):
            return False
        log.info("initial copy done", extra={"site": site.id, "slot": slot.name})
        return True

    def _stream_until_stopped(self, s: _Session, topic: str, builder: EventBuilder,
                              progress: SourceProgress,
                              chunk_filter: TimescaleFilter | None) -> None:
        """Stream from the slot's confirmed point until stopped; then let Kafka acknowledge
        what is in flight and confirm it."""
        site, slot, producer = self.site, s.slot, s.producer
        assert slot is not None and s.repl is not None and s.system is not None
        assert producer is not None
        stream = ReplicationStream(s.repl, slot.name, site.publication, slot.confirmed_flush_lsn)
        selection = TableSelection(lambda name: matches(name, site.tables, site.exclude))
        log.info("streaming", extra={"site": site.id, "slot": slot.name, "topic": topic,
                                     "from_lsn": format_lsn(slot.confirmed_flush_lsn),
                                     "system_id": s.system.system_id})
        self.health.set_ready(True)
        self.metrics.streaming.labels(site.id).set(1)
        try:
            self._stream(stream, builder, producer, progress, s.conn, selection, chunk_filter,
                         s.snapshots)
        finally:
            self.health.set_ready(False, "not streaming (reconnecting or stopping)")
            self.metrics.streaming.labels(site.id).set(0)
        producer.flush(30)
        stream.send_status(progress.received_lsn, progress.confirmed_lsn)
        stream.finish()
        self.stats.confirmed_lsn = progress.confirmed_lsn
        log.info("stopped", extra={"site": site.id,
                                   "confirmed_lsn": format_lsn(progress.confirmed_lsn)})

    def _sweep_relations(self, conn: psycopg.Connection, builder: EventBuilder,
                         selection: TableSelection, chunk_filter: TimescaleFilter | None,
                         dropped: DroppedRelations, received_lsn: int) -> None:
        """Forget relations the site dropped once the stream is past their drop, and look for
        newly dropped ones: chunks come and go on TimescaleDB sites, each with a new OID."""
        gone = dropped.due(received_lsn)
        if gone:
            builder.forget(gone)
            selection.forget(gone)
            if chunk_filter is not None:
                chunk_filter.forget(gone)
            log.debug("forgot dropped relations", extra={"site": self.site.id,
                                                         "relations": len(gone)})
        cached = builder.relations.oids() | selection.oids()
        if chunk_filter is not None:
            cached |= chunk_filter.oids()
        if cached:
            dropped.note(*dropped_relations(conn, cached))

    def _stream(self, stream: ReplicationStream, builder: EventBuilder,
                producer: EventProducer, progress: SourceProgress,
                conn: psycopg.Connection, selection: TableSelection,
                chunk_filter: TimescaleFilter | None = None,
                snapshots: Snapshots | None = None) -> None:
        now = time.monotonic()
        status = Every(self.site.status_interval_s, 0.0)  # a status at once
        observe, slot_check = Every(1.0, now), Every(5.0, now)
        tables, sweep = Every(self.site.table_refresh_s, now), Every(RELATION_SWEEP_S, now)
        progress_log = Every(PROGRESS_LOG_S, now)
        heartbeat = Heartbeat(self.site.heartbeat_interval_s, now)
        dropped = DroppedRelations()
        stats = self.stats
        read, decode, handle = stream.read, decode_message, builder.handle
        produce, emit = producer.produce, producer.emit
        poll, check = producer.poll, producer.check
        last_commit_ts = now_pg_us()  # the site's commit time of the last Commit read
        reported = -1
        n = 0
        m, site_id = self.metrics, self.site.id
        counted_records = counted_tx = 0
        while not self.stop.is_set():
            data = read(0.2)
            if data is not None:
                tag = data[0]
                if tag == XLOGDATA:
                    msg = decode(data[XLOG_HEADER:])
                    if chunk_filter is not None:  # returns None for compression writes
                        msg = chunk_filter(msg)
                    if msg is not None:
                        msg = selection(msg)  # None for a table the site does not send
                    if msg is not None:
                        for item in handle(msg):
                            if type(item) is tuple:
                                produce(*item)
                            else:  # a schema the records after it need published first
                                emit(item)
                        failpoint("source.mid_transaction")
                        if type(msg) is Message and snapshots is not None \
                                and msg.prefix == SNAPSHOT_PREFIX:  # a snapshot chunk's turn
                            for item in snapshots.on_message(msg, builder):
                                emit(item)
                            snapshots.step()  # the next chunk's message, without waiting
                        if type(msg) is Commit:
                            failpoint("source.after_produce")  # produced, not yet confirmable
                            progress.on_commit(msg.end_lsn)
                            stats.transactions += 1
                            last_commit_ts = msg.commit_ts
                    n += 1
                    if n & 1023:
                        continue
                elif tag == KEEPALIVE:
                    keepalive = decode_frame(data)
                    check()
                    progress.on_server_position(keepalive.wal_end, builder.in_transaction)
                    if keepalive.reply_requested:
                        stream.send_status(progress.received_lsn, progress.confirmed_lsn)
                        status.done(time.monotonic())
                        reported = progress.confirmed_lsn
            poll(0)
            check()
            now = time.monotonic()
            confirmed = progress.confirmed_lsn
            if status.due(now) or (confirmed != reported and status.since(now) >= 1.0):
                stream.send_status(progress.received_lsn, confirmed)
                status.done(now)
                reported = confirmed
                stats.messages, stats.records, stats.confirmed_lsn = n, progress.produced, confirmed
            if observe.due(now):
                self.health.beat()
                if stats.transactions != counted_tx:
                    heartbeat.saw_transaction(now)
                m.events.labels(site_id).inc(progress.produced - counted_records)
                m.transactions.labels(site_id).inc(stats.transactions - counted_tx)
                counted_records, counted_tx = progress.produced, stats.transactions
                m.confirmed_lsn.labels(site_id).set(confirmed)
                m.kafka_queue.labels(site_id).set(producer.queued())
                m.seconds_since_last_commit.labels(site_id).set(
                    max(0.0, (now_pg_us() - last_commit_ts) / 1e6))
                if heartbeat.due(now):  # an idle site: an empty transaction keeps lag fresh
                    conn.execute("SELECT pg_logical_emit_message(true, %s, %s)",
                                 (HEARTBEAT_PREFIX, site_id))
                if slot_check.due(now):
                    self._observe_slot(conn)
                    if not builder.in_transaction:  # the cloud's lag in bytes
                        for item in builder.position(self._server_lsn, time.time_ns() // 1000):
                            emit(item)
            if tables.due(now):
                self._refresh_tables(conn, snapshots)
            if sweep.due(now):
                self._sweep_relations(conn, builder, selection, chunk_filter, dropped,
                                      progress.received_lsn)
            if snapshots is not None:
                snapshots.step()
            if progress_log.due(now):
                log.info("progress", extra={
                    "site": self.site.id, "messages": n, "transactions": stats.transactions,
                    "records": progress.produced, "unacked": progress.unacked,
                    "confirmed_lsn": format_lsn(confirmed),
                    "received_lsn": format_lsn(progress.received_lsn)})
        stats.messages, stats.records = n, progress.produced

