"""The first snapshot of a new slot: every selected table exactly as it was at the slot's
consistent point, copied before the slot's stream starts.

The slot is created with ``EXPORT_SNAPSHOT``; a second connection imports that snapshot into a
REPEATABLE READ transaction and reads every table from it in key-ordered chunks. The stream
then starts at the consistent point, so each change after that point follows the copied rows
once: nothing missed, nothing doubled, and the copy is one consistent state of the whole site
(a transfer between two rows is either in both or in neither; a child row's parent is there).

Each chunk is one pseudo-transaction on the topic: a Begin with xid 0 and commit LSN one below
the consistent point, its rows as ``r`` events, a Commit. Every real transaction of the stream
commits at or after the consistent point, so the sink applies the chunks in topic order, then
the stream, and skips the chunks again on a replay (a chunk may repeat; it never follows a
stream transaction). Tables are copied referenced-first, so cloud foreign keys hold at each
chunk's commit.

A copy that starts over begins with one pseudo-transaction that removes the site's rows of every
copied table from the cloud (``t`` events, referencing tables first): what the first attempt
copied may have changed at the site since, and no stream between the two brings that.

Progress is ``tributary.snapshot_progress`` at the site (mode ``initial``), written when Kafka has
acknowledged a chunk. After a crash or a stop the copy continues after the last recorded key;
the exported snapshot died with its connection, so the rest is read as the site is then, and the
stream, which still starts at the consistent point, brings those rows back to the site's state
as it replays (the cloud may be ahead of the stream for a while; it ends equal). That holds for
tables with a key only: replaying an INSERT over a newer copy of a table without a key would
add its row twice. So a copy that would resume while such a table is not yet copied starts over
instead (:func:`start_over_if_needed`): a new slot, a new exported snapshot, the reset first.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import psycopg
from psycopg import sql

from cdc.core import site_ledger
from cdc.core.errors import DeliveryError, SchemaError
from cdc.source.pgoutput import Begin, Commit, Truncate
from cdc.runtime.failpoints import failpoint
from cdc.runtime.pgsession import pinned_conninfo
from cdc.source.snapshot import (
    TableKey, describe_table, ensure_progress_table, key_params, key_tuple,
)
from cdc.source.stream import now_pg_us

log = logging.getLogger(__name__)

PROGRESS_LOG_S = 10.0
SNAPSHOT_XID = 0  # no real transaction has xid 0 (InvalidTransactionId)


def referenced_first(conn: psycopg.Connection,
                     tables: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``tables`` ordered so a table comes after the tables its foreign keys reference (within
    the list; cycles and self-references keep name order)."""
    chosen = set(tables)
    edges = conn.execute(
        "SELECT cn.nspname, c.relname, pn.nspname, p.relname FROM pg_constraint k"
        " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace"
        " JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace"
        " WHERE k.contype = 'f' AND k.conrelid <> k.confrelid").fetchall()
    needs: dict[tuple[str, str], set[tuple[str, str]]] = {t: set() for t in tables}
    for cs, ct, ps, pt in edges:
        if (cs, ct) in chosen and (ps, pt) in chosen:
            needs[(cs, ct)].add((ps, pt))
    ordered: list[tuple[str, str]] = []
    left = sorted(tables)
    while left:
        ready = [t for t in left if not needs[t] - set(ordered)] or left[:1]  # a cycle: by name
        ordered.append(ready[0])
        left.remove(ready[0])
    return ordered


def plan(conn: psycopg.Connection, slot: str, tables: list[tuple[str, str]]) -> None:
    """Record, before the slot exists, that these tables need the initial copy: a crash between
    here and the copy's end resumes it instead of forgetting it."""
    ensure_progress_table(conn)
    with conn.transaction():
        site_ledger.plan_initial(conn, slot, referenced_first(conn, tables))


def start_over_if_needed(conn: psycopg.Connection, site_id: str, slot: str) -> bool:
    """Drop the slot of an initial copy that would resume while a table without a key is not yet
    copied (see the module docstring); True when it did: the copy starts over. Nothing streamed
    from that slot yet, so nothing is lost with it."""
    ensure_progress_table(conn)
    keyless = []
    for schema, table, _, _ in site_ledger.initial_pending(conn, slot):
        try:
            if describe_table(conn, schema, table).keyless:
                keyless.append(f"{schema}.{table}")
        except SchemaError:
            continue  # gone: nothing to copy
    if not keyless:
        return False
    log.warning("initial copy starts over: tables without a key cannot resume it; the slot is "
                "created again", extra={"site": site_id, "slot": slot, "tables": keyless})
    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    return True


def open_snapshot(dsn: str, snapshot_name: str | None) -> psycopg.Connection:
    """A REPEATABLE READ transaction on the exported snapshot (``None``: on the site as it is
    now, for a copy resumed after the exported snapshot is gone)."""
    snap = psycopg.connect(pinned_conninfo(dsn))
    snap.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    snap.read_only = True
    if snapshot_name is not None:
        snap.execute("SET TRANSACTION SNAPSHOT %s" % sql.Literal(snapshot_name).as_string(snap))
    else:
        snap.execute("SELECT 1")  # the transaction's snapshot is taken here
    return snap


@dataclass
class _Mark:
    """A chunk produced but not yet recorded: recorded once Kafka acknowledged ``produced``."""

    produced: int
    schema: str
    table: str
    last: list[str] | None
    rows: int
    done: bool


class InitialCopy:
    """Copies the tables planned for a slot's initial copy, chunk by chunk, into Kafka."""

    def __init__(self, conn: psycopg.Connection, slot: str, chunk_rows: int, consistent_lsn: int,
                 before_describe: Callable[[TableKey], None] | None = None) -> None:
        self.conn = conn  # autocommit: progress rows
        self.slot = slot
        self.chunk_rows = chunk_rows
        self.lsn = max(consistent_lsn - 1, 0)
        self._before_describe = before_describe
        ensure_progress_table(conn)

    def pending(self) -> list[tuple[str, str, list[str] | None, int]]:
        return site_ledger.initial_pending(self.conn, self.slot)

    def _cancelled(self, schema: str, table: str) -> bool:
        state = site_ledger.snapshot_state(self.conn, self.slot, schema, table)
        return state is None or state == "cancelled"

    def run(self, snap: psycopg.Connection, builder: Any, producer: Any, progress: Any,
            stop: Any, on_chunk: Callable[[], None] = lambda: None,
            started_over: bool = False) -> bool:
        """Copy what is pending; True when all is copied and recorded, False when stopped.
        ``started_over``: an earlier attempt's rows are in the cloud; they go first."""
        marks: list[_Mark] = []
        try:
            if started_over and not self._started():
                self._reset(snap, builder, producer)
            for schema, table, after, copied in self.pending():
                if not self._table(snap, schema, table, after, copied, builder, producer,
                                   progress, stop, marks, on_chunk):
                    break
            left = producer.flush(60)
            self._settle(marks, progress)
            if left or marks:
                raise DeliveryError(f"slot {self.slot}: Kafka did not acknowledge the initial "
                                    f"copy's last chunks within 60 s ({left} records queued)")
        finally:
            snap.rollback()
        return not stop.is_set() and not self.pending()

    def _started(self) -> bool:
        return site_ledger.initial_started(self.conn, self.slot)

    def _reset(self, snap: psycopg.Connection, builder: Any, producer: Any) -> None:
        """The first pseudo-transaction: the site's rows of every planned table leave the cloud
        (tables that reference others first, so cloud foreign keys hold)."""
        oids = []
        for schema, table, _, _ in reversed(self.pending()):
            try:
                key = describe_table(snap, schema, table)
            except SchemaError:
                continue
            if self._before_describe is not None:
                self._before_describe(key)
            builder.handle(key.relation)
            oids.append(key.oid)
        if not oids:
            return
        ts = now_pg_us()
        records = builder.handle(Begin(self.lsn, ts, SNAPSHOT_XID))
        records += builder.handle(Truncate(tuple(oids), False, False))
        records += builder.handle(Commit(0, self.lsn, self.lsn, ts))
        for item in records:
            producer.emit(item)
        log.info("initial copy: the site's rows of the copied tables are replaced in the cloud",
                 extra={"slot": self.slot, "tables": len(oids)})

    def _table(self, snap: psycopg.Connection, schema: str, table: str, after: list[str] | None,
               copied: int, builder: Any, producer: Any, progress: Any, stop: Any,
               marks: list[_Mark], on_chunk: Callable[[], None]) -> bool:
        name = f"{schema}.{table}"
        try:
            key = describe_table(snap, schema, table)
        except SchemaError as exc:
            log.warning("initial copy: table gone", extra={"table": name, "error": str(exc)})
            self._record(_Mark(0, schema, table, after, 0, True))
            return True
        if self._before_describe is not None:
            self._before_describe(key)
        builder.handle(key.relation)
        total = _estimate(snap, key)
        key_at = [key.columns.index(k) for k in key.keys]
        query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
            sql.SQL(", ").join(map(sql.Identifier, key.columns)), sql.Identifier(schema, table),
            sql.SQL("{} > {}").format(key_tuple(key), key_params(key)),
            sql.SQL(", ").join(map(sql.Identifier, key.keys)), sql.Literal(self.chunk_rows))
        first = sql.SQL("SELECT {} FROM {} ORDER BY {} LIMIT {}").format(
            sql.SQL(", ").join(map(sql.Identifier, key.columns)), sql.Identifier(schema, table),
            sql.SQL(", ").join(map(sql.Identifier, key.keys)), sql.Literal(self.chunk_rows))
        started, last_log = time.monotonic(), 0.0
        log.info("initial copy of a table", extra={"table": name, "rows_estimate": total,
                                                   "resumed_after_key": after})
        width = len(key.columns)
        if key.keyless:  # one pass through a cursor: equal rows need no order, and such a
            # copy is never resumed (start_over_if_needed), so it always starts at the first row
            snap.execute("CLOSE ALL")  # the cursor of a keyless table cancelled midway
            snap.execute(sql.SQL("DECLARE tributary_copy NO SCROLL CURSOR FOR SELECT {} FROM {}")
                         .format(sql.SQL(", ").join(map(sql.Identifier, key.columns)),
                                 sql.Identifier(schema, table)))
        while True:
            if stop.is_set():
                return False
            on_chunk()
            if self._cancelled(schema, table):
                log.info("initial copy cancelled", extra={"table": name, "rows": copied})
                return True
            cur = snap.cursor()
            if key.keyless:
                cur.execute(sql.SQL("FETCH {} FROM tributary_copy").format(
                    sql.Literal(self.chunk_rows)))
            elif after is not None:
                cur.execute(query, after)
            else:
                cur.execute(first)
            result = cur.pgresult
            assert result is not None
            n = result.ntuples
            failpoint("initial_copy.read")
            if n:  # one pseudo-transaction (see the module docstring)
                ts = now_pg_us()
                records = builder.handle(Begin(self.lsn, ts, SNAPSHOT_XID))
                values: tuple = ()
                for i in range(n):
                    values = tuple(result.get_value(i, j) for j in range(width))
                    records += builder.snapshot_row(key.oid, values)
                records += builder.handle(Commit(0, self.lsn, self.lsn, ts))
                for item in records:
                    producer.emit(item)
                    failpoint("initial_copy.in_chunk")
                if not key.keyless:
                    after = [bytes(values[i]).decode() for i in key_at]
            copied += n
            done = n < self.chunk_rows
            marks.append(_Mark(progress.produced, schema, table, after, n, done))
            producer.poll(0)
            producer.check()
            self._settle(marks, progress)
            now = time.monotonic()
            if done or now - last_log >= PROGRESS_LOG_S:
                last_log = now
                rate = copied / max(now - started, 1e-6)
                log.info("snapshot progress", extra={
                    "table": name, "rows": copied, "rows_estimate": total,
                    "percent": round(100.0 * copied / total, 1) if total else None,
                    "rows_per_s": round(rate), "state": "done" if done else "running",
                    "last_key": after})
            if done:
                if key.keyless:
                    snap.execute("CLOSE tributary_copy")
                return True

    def _settle(self, marks: list[_Mark], progress: Any) -> None:
        while marks and progress.acked >= marks[0].produced:
            self._record(marks.pop(0))

    def _record(self, mark: _Mark) -> None:
        site_ledger.record_initial_chunk(self.conn, self.slot, mark.schema, mark.table, mark.last,
                                         mark.rows, mark.done)


def _estimate(conn: psycopg.Connection, key: TableKey) -> int | None:
    """The planner's row count (hypertables: the sum over their chunks), for progress lines."""
    row = conn.execute(
        "SELECT sum(greatest(c.reltuples, 0))::bigint FROM pg_class c WHERE c.oid = %s OR c.oid"
        " IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = %s)", (key.oid, key.oid)).fetchone()
    return int(row[0]) if row and row[0] else None


