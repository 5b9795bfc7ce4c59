"""The replication slot at a site: checked, created when missing, never dropped.

Dropping a slot loses the changes it holds, so the source only creates one, and refuses one
that belongs to another database or plugin or that PostgreSQL invalidated, naming the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from cdc.core import site_ledger
from cdc.core.errors import ReplicationError
from cdc.core.lsn import parse_lsn

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SlotState:
    name: str
    confirmed_flush_lsn: int
    restart_lsn: int
    wal_status: str | None


@dataclass(frozen=True, slots=True)
class SlotFigures:
    """How far a slot is behind its server, for metrics and ``cdc status``."""

    active: bool
    wal_status: str | None
    confirmed_flush_lsn: str | None
    lag_bytes: int | None  # the server's WAL position past what the slot confirmed
    retained_bytes: int | None  # WAL the slot keeps on the site's disk
    safe_wal_size: int | None  # WAL left before max_slot_wal_keep_size invalidates the slot
    server_lsn: int


def slot_figures(conn: psycopg.Connection, slot: str) -> SlotFigures | None:
    row = conn.execute(
        "SELECT active, wal_status, confirmed_flush_lsn::text,"
        " (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint,"
        " (pg_current_wal_lsn() - restart_lsn)::bigint, safe_wal_size, pg_current_wal_lsn()::text"
        " FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    if row is None:
        return None
    return SlotFigures(bool(row[0]), row[1], row[2], _int(row[3]), _int(row[4]), _int(row[5]),
                       parse_lsn(row[6]))


def _int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def slot_state(conn: psycopg.Connection, slot: str) -> SlotState | None:
    row = conn.execute(
        "SELECT plugin, slot_type, confirmed_flush_lsn::text, restart_lsn::text, wal_status, database"
        " FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    if row is None:
        return None
    plugin, kind, confirmed, restart, wal_status, database = row
    current = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    if database != current:
        raise ReplicationError(f"slot {slot} belongs to database {database}, not {current}: "
                               "set site.slot to a name of its own for this database")
    if kind != "logical" or plugin != "pgoutput":
        raise ReplicationError(f"slot {slot} exists but is {kind} with plugin {plugin}, not logical pgoutput")
    if wal_status == "lost":
        raise ReplicationError(
            f"slot {slot} was invalidated (wal_status lost: the WAL it needed was removed, see "
            "max_slot_wal_keep_size); changes were lost at the site. Drop the slot "
            f"(SELECT pg_drop_replication_slot('{slot}')) and start the source again: it creates "
            "a new slot and copies the site anew (rows deleted meanwhile stay in the cloud: run "
            "cdc sink remove-site first for an exact copy, or cdc verify after)")
    return SlotState(slot, parse_lsn(confirmed) if confirmed else 0,
                     parse_lsn(restart) if restart else 0, wal_status)


def record_creation(conn: psycopg.Connection, state: SlotState) -> None:
    """Remember where the source created its slot, at the site (``tributary.slots``)."""
    try:
        with conn.transaction():
            site_ledger.record_slot_creation(conn, state.name, state.confirmed_flush_lsn)
    except psycopg.errors.InsufficientPrivilege as exc:
        log.warning("cannot record the slot's creation at the site (no CREATE on the database):"
                    " the cloud will not be told if it is created again", extra={
                        "slot": state.name, "error": str(exc)})


def unused_since_creation(conn: psycopg.Connection, state: SlotState) -> bool:
    """Whether nothing was confirmed to the slot since this source created it: its stream starts
    at its creation point, and nothing before that point reaches the cloud through it."""
    try:
        created = site_ledger.slot_created_at(conn, state.name)
    except psycopg.errors.UndefinedTable:
        return False
    return created == state.confirmed_flush_lsn


def create_slot_exporting(repl_conn: psycopg.Connection, slot: str) -> tuple[SlotState, str]:
    """Create the slot and export the snapshot of its consistent point: (state, snapshot name).
    The snapshot lives until the next command on ``repl_conn``: import it before that."""
    row = repl_conn.execute(sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT")
                            .format(sql.Identifier(slot))).fetchone()
    assert row is not None
    lsn = parse_lsn(row[1])
    log.info("created replication slot", extra={"slot": slot, "lsn": row[1],
                                                "exported_snapshot": row[2]})
    return SlotState(slot, lsn, lsn, "reserved"), str(row[2])


def ensure_slot(repl_conn: psycopg.Connection, conn: psycopg.Connection, slot: str) -> SlotState:
    """The slot's state, creating it (logical, pgoutput) when missing."""
    state = slot_state(conn, slot)
    if state is not None:
        return state
    row = repl_conn.execute(sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT")
                            .format(sql.Identifier(slot))).fetchone()
    assert row is not None
    lsn = parse_lsn(row[1])
    log.info("created replication slot", extra={"slot": slot, "lsn": row[1]})
    return SlotState(slot, lsn, lsn, "reserved")


