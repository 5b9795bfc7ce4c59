"""The site's bookkeeping, the ``tributary`` schema in the site database: the one owner of
every statement on it.

- ``snapshot_progress``: per slot and table, a snapshot's last key copied, rows, state
  (``pending``, ``running``, ``done``, ``cancelled``) and mode (``initial``: copied before the
  stream starts, in ``position`` order; ``incremental``: while it streams);
- ``slots``: where the source created its slot, so a slot created again is noticed.

Written only after Kafka holds what a row says is copied. Every function runs on the caller's
connection; none opens one or a transaction, except where it says so.
"""

from __future__ import annotations

from typing import Any, Sequence

from psycopg import sql

from cdc.core.ledger import Connection
from cdc.core.lsn import format_lsn, parse_lsn

SCHEMA = "tributary"
PROGRESS = sql.Identifier(SCHEMA, "snapshot_progress")
SLOTS = sql.Identifier(SCHEMA, "slots")

_PROGRESS_DDL = [
    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        slot text NOT NULL, table_schema text NOT NULL, table_name text NOT NULL,
        after_key text[], state text NOT NULL DEFAULT 'pending', rows bigint NOT NULL DEFAULT 0,
        requested_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz,
        PRIMARY KEY (slot, table_schema, table_name))""").format(PROGRESS),
    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS mode text NOT NULL"
            " DEFAULT 'incremental'").format(PROGRESS),
    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS position integer").format(PROGRESS),
]
_SLOTS_DDL = [
    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)),
    sql.SQL("CREATE TABLE IF NOT EXISTS {} (slot text PRIMARY KEY, created_lsn pg_lsn NOT"
            " NULL, created_at timestamptz NOT NULL DEFAULT now())").format(SLOTS),
]

Pending = tuple[str, str, "list[str] | None", int]
"""(schema, table, the last key copied as text or None, rows copied so far)."""


def ensure_progress_table(conn: Connection) -> None:
    """The snapshot progress table (needs CREATE on the database the first time); call inside
    a transaction."""
    for stmt in _PROGRESS_DDL:
        conn.execute(stmt)


# -- initial copy -------------------------------------------------------------------------------

def plan_initial(conn: Connection, slot: str, tables: Sequence[tuple[str, str]]) -> None:
    """Record, in copy order, the tables an initial copy owes (forgetting any earlier plan)."""
    conn.execute(sql.SQL("DELETE FROM {} WHERE slot = %s").format(PROGRESS), (slot,))
    for position, (schema, table) in enumerate(tables):
        conn.execute(sql.SQL(
            "INSERT INTO {} (slot, table_schema, table_name, mode, position)"
            " VALUES (%s, %s, %s, 'initial', %s)").format(PROGRESS),
            (slot, schema, table, position))


def initial_pending(conn: Connection, slot: str) -> list[Pending]:
    """Tables of the initial copy not done yet, in copy order, with where each stands."""
    rows = conn.execute(sql.SQL(
        "SELECT table_schema, table_name, after_key, rows FROM {} WHERE slot = %s AND"
        " mode = 'initial' AND state IN ('pending', 'running') ORDER BY position,"
        " table_schema, table_name").format(PROGRESS), (slot,)).fetchall()
    return [(r[0], r[1], r[2], int(r[3])) for r in rows]


def initial_started(conn: Connection, slot: str) -> bool:
    """Whether any table of the initial copy has rows copied or left ``pending``."""
    row = conn.execute(sql.SQL(
        "SELECT count(*) FROM {} WHERE slot = %s AND mode = 'initial' AND (state <> 'pending'"
        " OR rows > 0)").format(PROGRESS), (slot,)).fetchone()
    return bool(row and row[0])


def record_initial_chunk(conn: Connection, slot: str, schema: str, table: str,
                         last_key: list[str] | None, rows: int, done: bool) -> None:
    """A chunk of the initial copy Kafka holds: its last key and rows (a cancel stays)."""
    conn.execute(sql.SQL(
        "UPDATE {} SET after_key = %s, rows = rows + %s, state = CASE WHEN state ="
        " 'cancelled' THEN state WHEN %s THEN 'done' ELSE 'running' END, updated_at = now()"
        " WHERE slot = %s AND table_schema = %s AND table_name = %s").format(PROGRESS),
        (last_key, rows, done, slot, schema, table))


# -- incremental snapshots ----------------------------------------------------------------------

def request_snapshot(conn: Connection, slot: str, schema: str, table: str) -> bool:
    """Copy a table (again from the start unless one is already under way); True if asked."""
    cur = conn.execute(sql.SQL(
        "INSERT INTO {} (slot, table_schema, table_name) VALUES (%s, %s, %s)"
        " ON CONFLICT (slot, table_schema, table_name) DO UPDATE SET state = 'pending',"
        " after_key = NULL, rows = 0, requested_at = now(), mode = 'incremental'"
        " WHERE {}.state IN ('done', 'cancelled')").format(PROGRESS, PROGRESS),
        (slot, schema, table))
    return bool(cur.rowcount)


def next_snapshot(conn: Connection, slot: str) -> Pending | None:
    """The incremental snapshot to work on next: the oldest request not done."""
    row = conn.execute(sql.SQL(
        "SELECT table_schema, table_name, after_key, rows FROM {} WHERE slot = %s"
        " AND state IN ('pending', 'running') AND mode = 'incremental'"
        " ORDER BY requested_at, table_schema, table_name LIMIT 1").format(PROGRESS),
        (slot,)).fetchone()
    return None if row is None else (row[0], row[1], row[2], int(row[3]))


def record_snapshot_chunk(conn: Connection, slot: str, schema: str, table: str,
                          last_key: list[str] | None, rows: int,
                          state: str) -> tuple[int, str] | None:
    """A chunk Kafka holds: its last key and rows; returns (rows so far, state)."""
    row = conn.execute(sql.SQL(
        "UPDATE {} SET after_key = %s, rows = rows + %s, state = CASE WHEN state ="
        " 'cancelled' THEN state ELSE %s END, updated_at = now() WHERE slot = %s AND"
        " table_schema = %s AND table_name = %s RETURNING rows, state").format(PROGRESS),
        (last_key, rows, state, slot, schema, table)).fetchone()
    return None if row is None else (row[0], row[1])


def snapshot_state(conn: Connection, slot: str, schema: str, table: str) -> str | None:
    row = conn.execute(sql.SQL(
        "SELECT state FROM {} WHERE slot = %s AND table_schema = %s AND table_name = %s"
    ).format(PROGRESS), (slot, schema, table)).fetchone()
    return None if row is None else row[0]


def cancel_snapshot(conn: Connection, slot: str, schema: str, table: str) -> bool:
    """Mark a table's snapshot cancelled; the running source stops copying it."""
    cur = conn.execute(sql.SQL(
        "UPDATE {} SET state = 'cancelled', updated_at = now() WHERE slot = %s AND"
        " table_schema = %s AND table_name = %s AND state IN ('pending', 'running')").format(
        PROGRESS), (slot, schema, table))
    return bool(cur.rowcount)


def snapshots_not_done(conn: Connection, slot: str) -> list[dict[str, Any]]:
    """For ``cdc status``: every snapshot of the slot not done, in copy order."""
    rows = conn.execute(sql.SQL(
        "SELECT table_schema, table_name, mode, state, rows FROM {} WHERE slot = %s"
        " AND state <> 'done' ORDER BY position NULLS LAST, 1, 2").format(PROGRESS),
        (slot,)).fetchall()
    return [{"table": f"{r[0]}.{r[1]}", "mode": r[2], "state": r[3], "rows": r[4]}
            for r in rows]


# -- slots --------------------------------------------------------------------------------------

def record_slot_creation(conn: Connection, slot: str, created_lsn: int) -> None:
    """Remember where the source created its slot; call inside a transaction."""
    for stmt in _SLOTS_DDL:
        conn.execute(stmt)
    conn.execute(sql.SQL(
        "INSERT INTO {} (slot, created_lsn) VALUES (%s, %s) ON CONFLICT (slot) DO UPDATE SET"
        " created_lsn = excluded.created_lsn, created_at = now()").format(SLOTS),
        (slot, format_lsn(created_lsn)))


def slot_created_at(conn: Connection, slot: str) -> int | None:
    """The LSN at which the source created the slot, if it recorded one."""
    row = conn.execute(sql.SQL("SELECT created_lsn::text FROM {} WHERE slot = %s").format(SLOTS),
                       (slot,)).fetchone()
    return None if row is None else parse_lsn(row[0])
