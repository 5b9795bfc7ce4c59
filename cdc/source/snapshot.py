"""Snapshots of rows that exist before the stream carries them: a site's existing data at first
start, and tables that join the replicated set later. They are copied while the other tables
keep streaming.

A table is copied in key-ordered chunks. For each chunk the source writes a transactional
logical message (``tributary-snapshot``: table, the key after which the chunk starts, its last
key) at the site; when the stream reaches that message, the source reads the chunk's rows and
publishes them as ``r`` events inside the message's transaction. Every change made after the
message follows in the stream, so the cloud ends with exactly the site's rows: nothing missed,
and a row both read and changed is only written again with the same or a newer value
(DBLog-style watermarks, as Debezium's incremental snapshots).

Progress lives at the site, in ``tributary.snapshot_progress`` (per slot and table: the last key
copied, rows, state), written when a chunk's message is processed. A chunk whose records Kafka
had not acknowledged before a crash comes back with the replayed stream (its message is after
the slot's confirmed position), and the next chunk starts after the recorded key: a restart
resumes, it does not start over. ``cdc source snapshot --cancel`` marks a table cancelled.

A table without a key is a multiset: a row read after the message and changed after it too
would arrive twice (an insert) or take an equal row with it (a delete). Its copy reads the table
as it was at the message exactly: the message is written in a transaction that holds the
table's SHARE lock (no writer to it can commit in between) and exports its snapshot, which a
second connection imports and keeps until the stream reaches the message. A message whose
snapshot this session does not hold (written before a restart) copies nothing; the table's
next message does.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import psycopg
from psycopg import sql

from cdc.core import site_ledger
from cdc.core.errors import SchemaError
from cdc.source.catalog import key_columns
from cdc.source.pgoutput import Column, Message, Relation, Truncate

log = logging.getLogger(__name__)

PREFIX = "tributary-snapshot"


def ensure_progress_table(conn: psycopg.Connection) -> None:
    """The site table of snapshot progress (needs CREATE on the database the first time)."""
    with conn.transaction():
        site_ledger.ensure_progress_table(conn)


@dataclass(frozen=True, slots=True)
class TableKey:
    """A table's identity, its key columns (with types) and a Relation describing it."""

    schema: str
    table: str
    oid: int
    keys: tuple[str, ...]
    key_types: tuple[str, ...]
    columns: tuple[str, ...]
    relation: Relation
    keyless: bool = False  # REPLICA IDENTITY FULL without a primary key: a multiset

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


def describe_table(conn: psycopg.Connection, schema: str, table: str) -> TableKey:
    """The table as a Relation message would describe it (key flags as pgoutput sets them)."""
    ident = sql.Identifier(schema, table).as_string(conn)
    row = conn.execute("SELECT c.oid, c.relreplident FROM pg_class c WHERE c.oid = %s::regclass",
                       (ident,)).fetchone()
    if row is None:
        raise SchemaError(f"{schema}.{table}: no such table to snapshot")
    oid, identity = int(row[0]), str(row[1])
    index_flag = "i.indisprimary" if identity == "d" else "i.indisreplident"
    key_attnums = {r[0] for r in conn.execute(sql.SQL(
        "SELECT unnest(i.indkey) FROM pg_index i WHERE i.indrelid = %s AND {}").format(
        sql.SQL(index_flag)), (oid,)).fetchall()} if identity in ("d", "i") else set()
    attrs = conn.execute(
        "SELECT attnum, attname, atttypid, atttypmod, format_type(atttypid, atttypmod)"
        " FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped"
        " ORDER BY attnum", (oid,)).fetchall()
    columns = tuple(Column(1 if identity == "f" or a[0] in key_attnums else 0, a[1], int(a[2]),
                           int(a[3])) for a in attrs)
    pk = key_columns(conn, oid)
    flagged = [a[1] for a in attrs if a[0] in key_attnums]
    keys = tuple(pk if identity in ("d", "f") and pk else flagged or [a[1] for a in attrs])
    types = {a[1]: a[4] for a in attrs}
    return TableKey(schema, table, oid, keys, tuple(types[k] for k in keys),
                    tuple(a[1] for a in attrs),
                    Relation(oid, schema, table, identity, columns),
                    keyless=identity == "f" and not pk)


class Snapshots:
    """The snapshot work of one source session: requests, the chunk in flight, progress."""

    def __init__(self, conn: psycopg.Connection, slot: str, chunk_rows: int,
                 before_describe: Callable[[TableKey], None] | None = None,
                 selected: Callable[[str], bool] = lambda name: True,
                 dsn: str | None = None) -> None:
        self.conn = conn
        self._dsn = dsn  # for the connection that holds a keyless table's snapshot
        # (table, token, connection in a transaction at the snapshot of the table's message)
        self._held: tuple[str, str, psycopg.Connection] | None = None
        self._selected = selected  # a table no longer selected is not copied any further
        self._before_describe = before_describe  # e.g. TimescaleDB facts of a hypertable
        self.slot = slot
        self.chunk_rows = chunk_rows
        self._in_flight: str | None = None  # table whose chunk message is not processed yet
        self._last_log = 0.0
        self._idle_until = 0.0  # nothing pending: look again only after this
        ensure_progress_table(conn)

    def request(self, tables: list[tuple[str, str]], why: str) -> None:
        """Copy these tables (again from the start unless one is already under way)."""
        for schema, table in tables:
            if site_ledger.request_snapshot(self.conn, self.slot, schema, table):
                log.info("snapshot requested", extra={"table": f"{schema}.{table}", "why": why})
        self._idle_until = 0.0

    def step(self) -> None:
        """Write the next chunk's message when none is in flight (between stream reads)."""
        if self._in_flight is not None or time.monotonic() < self._idle_until:
            return
        found = site_ledger.next_snapshot(self.conn, self.slot)
        if found is None:
            self._idle_until = time.monotonic() + 5.0  # a cancel or a request may come
            return
        schema, table, after, _ = found
        if not self._selected(f"{schema}.{table}"):
            cancel(self.conn, self.slot, schema, table)
            log.info("snapshot cancelled: the table is no longer selected",
                     extra={"table": f"{schema}.{table}"})
            return
        key = describe_table(self.conn, schema, table)
        cond, params = _after(key, after)
        row = None if key.keyless else self.conn.execute(sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} OFFSET {} LIMIT 1")
                                .format(_key_text(key), sql.Identifier(schema, table), cond,
                                        _key_cols(key), sql.Literal(self.chunk_rows - 1)),
                                params).fetchone()
        # None: the rest of the table (always, for a table without a key: equal rows could
        # straddle a page's end, and a row with a NULL in it is never "after" another)
        last = list(row) if row is not None else None
        token = os.urandom(8).hex()
        content = json.dumps({"slot": self.slot, "schema": schema, "table": table,
                              "after": after, "last": last, "token": token})
        held = None
        try:
            with self.conn.transaction():  # flushed now: sites with synchronous_commit = off
                self.conn.execute("SET LOCAL synchronous_commit = on")  # would hold it ~200 ms
                if key.keyless and self._dsn:
                    held = self._hold_snapshot(key)
                self.conn.execute("SELECT pg_logical_emit_message(true, %s, %s)",
                                  (PREFIX, content))
        except psycopg.errors.LockNotAvailable:
            if held is not None:
                held.close()
            log.info("snapshot of a table without a key waits: a long transaction writes it",
                     extra={"table": key.qualified})
            self._idle_until = time.monotonic() + 5.0
            return
        except BaseException:
            if held is not None:
                held.close()
            raise
        if held is not None:
            self.close()
            self._held = (key.qualified, token, held)
        self._in_flight = key.qualified

    def _hold_snapshot(self, key: TableKey) -> psycopg.Connection:
        """In the message's transaction: lock the table against writers, export the snapshot,
        and import it on a connection of its own that keeps it until the message is read."""
        self.conn.execute("SET LOCAL lock_timeout = '5s'")
        self.conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
            sql.Identifier(key.schema, key.table)))
        row = self.conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None and self._dsn is not None
        held = psycopg.connect(self._dsn, application_name="tributary-snapshot")
        try:
            held.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            held.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(row[0])))
        except BaseException:
            held.close()
            raise
        return held

    def close(self) -> None:
        """Let go of a held snapshot (the session ends; its message copies nothing then)."""
        if self._held is not None:
            self._held[2].close()
            self._held = None

    def on_message(self, msg: Message, builder: Any) -> Iterator[Any]:
        """Our chunk message reached the stream: its rows, as ``r`` events of its transaction,
        read through a cursor a batch at a time (a table without a key is one chunk, however
        large: it never sits in memory whole)."""
        spec = json.loads(msg.content)
        if spec.get("slot") != self.slot:
            return  # another source's snapshot on the same database
        schema, table, after, last = spec["schema"], spec["table"], spec["after"], spec["last"]
        name = f"{schema}.{table}"
        held = None
        if self._held is not None and self._held[1] == spec.get("token"):
            held, self._held = self._held, None
        waiting = self._held is not None and self._held[0] == name  # its message still comes
        if self._in_flight == name and not waiting:
            self._in_flight = None
        try:
            key = describe_table(self.conn, schema, table)
        except SchemaError as exc:
            log.warning("snapshot chunk of a table gone", extra={"table": f"{schema}.{table}",
                                                                 "error": str(exc)})
            return
        if key.keyless and self._dsn and held is None:
            log.info("snapshot message of a table without a key from before a restart: its "
                     "next message copies it", extra={"table": key.qualified})
            return
        if self._before_describe is not None:
            self._before_describe(key)
        builder.handle(key.relation)  # the stream may not have described the table yet
        cond, params = _after(key, after)
        if last is not None:
            cond = sql.SQL("{} AND {} <= {}").format(cond, key_tuple(key), key_params(key))
            params = params + list(last)
        # equal rows need no order (and json, point, ... have none)
        order = sql.SQL("") if key.keyless else sql.SQL(" ORDER BY {}").format(_key_cols(key))
        if key.keyless:  # copied whole in one chunk: it replaces the site's rows, never adds
            yield from builder.handle(Truncate((key.oid,), False, False))
        rows = 0
        width = len(key.columns)
        reader = held[2] if held is not None else self.conn
        try:
            with reader.transaction():
                reader.execute(sql.SQL("DECLARE tributary_chunk NO SCROLL CURSOR FOR SELECT {}"
                                       " FROM {} WHERE {}{}").format(
                    sql.SQL(", ").join(map(sql.Identifier, key.columns)),
                    sql.Identifier(schema, table), cond, order), params)
                cur = reader.cursor()
                fetch = sql.SQL("FETCH {} FROM tributary_chunk").format(
                    sql.Literal(max(self.chunk_rows, 1000)))
                while True:
                    cur.execute(fetch)
                    result = cur.pgresult  # the raw text of each value, as pgoutput prints it
                    assert result is not None
                    for i in range(result.ntuples):
                        values = tuple(result.get_value(i, j) for j in range(width))
                        yield from builder.snapshot_row(key.oid, values)
                    rows += result.ntuples
                    if not result.ntuples:
                        break
        finally:
            if held is not None:
                held[2].close()
        state = "done" if last is None else "running"
        row = site_ledger.record_snapshot_chunk(self.conn, self.slot, schema, table, last, rows,
                                                state)
        now = time.monotonic()
        if state == "done" or now - self._last_log >= 10:
            self._last_log = now
            log.info("snapshot progress", extra={
                "table": f"{schema}.{table}", "rows": row[0] if row else rows,
                "state": row[1] if row else state, "last_key": last})


def cancel(conn: psycopg.Connection, slot: str, schema: str, table: str) -> bool:
    """Mark a table's snapshot cancelled; the running source stops copying it."""
    return site_ledger.cancel_snapshot(conn, slot, schema, table)


def _key_cols(key: TableKey) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, key.keys))


def _key_text(key: TableKey) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in key.keys)


def key_tuple(key: TableKey) -> sql.Composable:
    return sql.SQL("({})").format(_key_cols(key))


def key_params(key: TableKey) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(", ").join(
        sql.SQL("%s::{}").format(sql.SQL(t)) for t in key.key_types))


def _after(key: TableKey, after: list[str] | None) -> tuple[sql.Composable, list[Any]]:
    if after is None:
        return sql.SQL("true"), []
    return sql.SQL("{} > {}").format(key_tuple(key), key_params(key)), list(after)
