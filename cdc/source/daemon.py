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
from cdc.source.slot import (create_slot_exporting, ensure_slot, record_creation, slot_figures,
                             slot_state, unused_since_creation)
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
        site, kafka = self.site, self.config.kafka
        self.stats.sessions += 1
        self.health.beat()  # a new attempt: alive, even while a server stays away (backoff)
        try:
            conn = psycopg.connect(pinned_conninfo(site.dsn), autocommit=True)
        except psycopg.OperationalError as exc:
            raise ConnectionLost(f"site {site.id}: cannot connect to the site database: {exc}") from exc
        repl = None
        producer = None
        snap: psycopg.Connection | None = None  # the initial copy's snapshot transaction
        snapshots: Snapshots | None = None
        try:
            self._prepare(conn)
            repl = open_replication(site.dsn)
            system = identify_system(repl)
            fresh_slot = slot_state(conn, site.slot_name) is None
            started_over = (not fresh_slot and site.snapshot == "initial"
                            and initial_copy.start_over_if_needed(conn, site.id, site.slot_name))
            fresh_slot = fresh_slot or started_over
            if fresh_slot and site.snapshot == "initial":
                # the rows the site holds at the slot's consistent point, read from its snapshot
                initial_copy.plan(conn, site.slot_name, self._usable)
                slot, exported = create_slot_exporting(repl, site.slot_name)
                snap = initial_copy.open_snapshot(site.dsn, exported)
            else:
                slot = ensure_slot(repl, conn, site.slot_name)
            if fresh_slot:
                record_creation(conn, slot)
            chunk_filter = hypertable_facts = None
            if self._timescaledb:  # chunk changes -> their hypertable, compression dropped
                chunks = ChunkCatalog(conn)
                chunk_filter = tsf = TimescaleFilter(
                    chunks, selected=lambda name: matches(name, site.tables, site.exclude),
                    ranges=chunks.chunk_range)

                def hypertable_facts(key: TableKey) -> None:  # a snapshot reads a hypertable
                    tsf.remember(key.oid, chunks.hypertable(key.schema, key.table))
            if site.snapshot == "initial":
                snapshots = Snapshots(
                    conn, slot.name, site.snapshot_chunk_rows, hypertable_facts,
                    selected=lambda name: matches(name, site.tables, site.exclude),
                    dsn=pinned_conninfo(site.dsn))
                if self._joined and not fresh_slot:
                    snapshots.request(self._joined, "joined the replicated set")
            topic = kafka.site_topic(site.id)
            ensure_topic(kafka, topic, kafka.topic_config)
            last = last_published(kafka, topic)
            log.info("topic tail", extra={
                "site": site.id, "topic": topic, "server_wal": format_lsn(system.xlogpos),
                "last_published_commit": format_lsn(last.commit_lsn) if last else None})
            went_back = wal_went_back(last, system.system_id, system.timeline, system.xlogpos)
            if went_back:
                raise ReplicationError(f"site {site.id}: {went_back}")
            identity = SiteIdentity(site.id, system.system_id, system.timeline, slot.name,
                                    system.database)
            if kafka.schema_registry_url:  # Confluent wire format: the registry holds schemas
                framing: Framing = RegistryFraming(registry_client(kafka), topic)
                publish_schema = None
            else:  # self-contained: schemas in the compacted schema topic, acked before use
                framing, publish_schema = SelfContained(), SchemaPublisher(kafka).publish
            builder = EventBuilder(identity, type_lookup(conn),
                                   key_lookup=primary_key_lookup(conn),
                                   column_lookup=column_lookup(conn), framing=framing,
                                   hypertable_of=chunk_filter.hypertable_of if chunk_filter
                                   else None, start_lsn=slot.confirmed_flush_lsn,
                                   slot_created=unused_since_creation(conn, slot),
                                   unchanged_lookup=unchanged_lookup(conn))
            progress = SourceProgress(slot.confirmed_flush_lsn)
            producer = EventProducer(kafka, topic, progress, publish_schema)
            if site.snapshot == "initial":
                copy = initial_copy.InitialCopy(conn, slot.name, site.snapshot_chunk_rows,
                                                slot.confirmed_flush_lsn, hypertable_facts)
                if copy.pending():
                    self.health.set_ready(False, "initial copy under way")
                    if snap is None:  # resumed: the exported snapshot died with its session
                        log.warning("initial copy resumed: the rest is read as the site is now; "
                                    "the stream brings it back to each later state",
                                    extra={"site": site.id, "slot": slot.name})
                        snap = initial_copy.open_snapshot(site.dsn, None)
                    if not copy.run(snap, builder, producer, progress, self.stop,
                                    on_chunk=self.health.beat, started_over=started_over):
                        log.info("stopped during the initial copy; it resumes at the next start",
                                 extra={"site": site.id})
                        return
                    log.info("initial copy done", extra={"site": site.id, "slot": slot.name})
            if snap is not None:
                snap.close()
                snap = None
            stream = ReplicationStream(repl, slot.name, site.publication, slot.confirmed_flush_lsn)
            log.info("streaming", extra={"site": site.id, "slot": slot.name, "topic": topic,
                                         "from_lsn": format_lsn(slot.confirmed_flush_lsn),
                                         "system_id": system.system_id})
            self.health.set_ready(True)
            self.metrics.streaming.labels(site.id).set(1)
            try:
                self._stream(stream, builder, producer, progress, conn, chunk_filter, snapshots)
            finally:
                self.health.set_ready(False, "not streaming (reconnecting or stopping)")
                self.metrics.streaming.labels(site.id).set(0)
            # stopped: let Kafka acknowledge what is in flight, then confirm it
            producer.flush(30)
            stream.send_status(progress.received_lsn, progress.confirmed_lsn)
            stream.finish()
            self.stats.confirmed_lsn = progress.confirmed_lsn
            log.info("stopped", extra={"site": site.id,
                                       "confirmed_lsn": format_lsn(progress.confirmed_lsn)})
        except DeliveryError:
            self.metrics.delivery_errors.labels(site.id).inc()
            if producer is not None:
                producer.abandon()
            raise
        finally:
            if snapshots is not None:
                snapshots.close()
            conn.close()
            if snap is not None:
                snap.close()
            if repl is not None:
                repl.close()

    def _sweep_relations(self, conn: psycopg.Connection, builder: EventBuilder,
                         chunk_filter: TimescaleFilter | None, dropped: DroppedRelations,
                         received_lsn: int) -> None:
        """Forget relations the site dropped once the stream is past their drop, and look for
        newly dropped ones: chunks come and go on TimescaleDB sites, each with a new OID."""
        gone = dropped.due(received_lsn)
        if gone:
            builder.forget(gone)
            if chunk_filter is not None:
                chunk_filter.forget(gone)
            log.debug("forgot dropped relations", extra={"site": self.site.id,
                                                         "relations": len(gone)})
        cached = builder.relations.oids()
        if chunk_filter is not None:
            cached |= chunk_filter.oids()
        if cached:
            dropped.note(*dropped_relations(conn, cached))

    def _stream(self, stream: ReplicationStream, builder: EventBuilder,
                producer: EventProducer, progress: SourceProgress,
                conn: psycopg.Connection, chunk_filter: TimescaleFilter | None = None,
                snapshots: Snapshots | None = None) -> None:
        interval = self.site.status_interval_s
        refresh = self.site.table_refresh_s
        last_refresh = last_sweep = time.monotonic()
        dropped = DroppedRelations()
        stats = self.stats
        read, decode, handle = stream.read, decode_message, builder.handle
        produce, emit = producer.produce, producer.emit
        poll, check = producer.poll, producer.check
        last_status = 0.0
        last_log = last_observed = last_slot = last_beat = time.monotonic()
        heartbeat_s = self.site.heartbeat_interval_s
        last_commit_seen = last_beat  # monotonic: when the stream last carried a Commit
        last_commit_ts = now_pg_us()  # the site's commit time of that Commit
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
                        last_status = time.monotonic()
                        reported = progress.confirmed_lsn
            poll(0)
            check()
            now = time.monotonic()
            confirmed = progress.confirmed_lsn
            if now - last_status >= interval or (confirmed != reported and now - last_status >= 1.0):
                stream.send_status(progress.received_lsn, confirmed)
                last_status, reported = now, confirmed
                stats.messages, stats.records, stats.confirmed_lsn = n, progress.produced, confirmed
            if now - last_observed >= 1.0:
                last_observed = now
                self.health.beat()
                if stats.transactions != counted_tx:
                    last_commit_seen = now
                m.events.labels(site_id).inc(progress.produced - counted_records)
                m.transactions.labels(site_id).inc(stats.transactions - counted_tx)
                counted_records, counted_tx = progress.produced, stats.transactions
                m.confirmed_lsn.labels(site_id).set(confirmed)
                m.kafka_queue.labels(site_id).set(producer.queued())
                m.seconds_since_last_commit.labels(site_id).set(
                    max(0.0, (now_pg_us() - last_commit_ts) / 1e6))
                if heartbeat_s and now - last_commit_seen >= heartbeat_s \
                        and now - last_beat >= heartbeat_s:
                    last_beat = now  # an idle site: an empty transaction keeps lag fresh
                    conn.execute("SELECT pg_logical_emit_message(true, %s, %s)",
                                 (HEARTBEAT_PREFIX, site_id))
                if now - last_slot >= 5.0:
                    last_slot = now
                    self._observe_slot(conn)
                    if not builder.in_transaction:  # the cloud's lag in bytes
                        for item in builder.position(self._server_lsn, time.time_ns() // 1000):
                            emit(item)
            if now - last_refresh >= refresh:
                last_refresh = now
                self._refresh_tables(conn, snapshots)
            if now - last_sweep >= RELATION_SWEEP_S:
                last_sweep = now
                self._sweep_relations(conn, builder, chunk_filter, dropped, progress.received_lsn)
            if snapshots is not None:
                snapshots.step()
            if now - last_log >= PROGRESS_LOG_S:
                last_log = now
                log.info("progress", extra={
                    "site": self.site.id, "messages": n, "transactions": stats.transactions,
                    "records": progress.produced, "unacked": progress.unacked,
                    "confirmed_lsn": format_lsn(confirmed),
                    "received_lsn": format_lsn(progress.received_lsn)})
        stats.messages, stats.records = n, progress.produced

