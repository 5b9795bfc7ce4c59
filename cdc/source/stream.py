"""The replication connection: START_REPLICATION with pgoutput, frames in, standby status out.

psycopg 3 opens the connection (``replication="database"``); the COPY_BOTH stream is then read
and answered at the libpq level, which is as fast as ``pg_recvlogical``. Frames are returned
undecoded: :mod:`cdc.source.pgoutput` parses them.
"""

from __future__ import annotations

import select
import time
from dataclasses import dataclass

import psycopg
from psycopg import pq, sql

from cdc.core.errors import ConnectionLost, ReplicationError
from cdc.core.lsn import format_lsn, parse_lsn
from cdc.source.pgoutput import PG_EPOCH_US_OFFSET, encode_standby_status
from cdc.runtime.pgsession import pinned_conninfo


@dataclass(frozen=True, slots=True)
class SystemInfo:
    """IDENTIFY_SYSTEM: which server and timeline the stream comes from."""

    system_id: str
    timeline: int
    xlogpos: int
    database: str


def now_pg_us() -> int:
    """Microseconds since 2000-01-01, the clock of the replication protocol."""
    return time.time_ns() // 1000 - PG_EPOCH_US_OFFSET


def open_replication(dsn: str) -> psycopg.Connection:
    """A replication connection (walsender in database mode)."""
    try:
        return psycopg.connect(pinned_conninfo(dsn), replication="database", autocommit=True)
    except psycopg.Error as exc:
        raise ConnectionLost(f"cannot open a replication connection: {exc}".strip()) from exc


def identify_system(conn: psycopg.Connection) -> SystemInfo:
    row = conn.execute("IDENTIFY_SYSTEM").fetchone()
    assert row is not None
    return SystemInfo(system_id=str(row[0]), timeline=int(row[1]), xlogpos=parse_lsn(row[2]),
                      database=str(row[3] or ""))


class ReplicationStream:
    """One START_REPLICATION session on an open replication connection."""

    def __init__(self, conn: psycopg.Connection, slot: str, publication: str,
                 start_lsn: int, messages: bool = True) -> None:
        self._conn = conn
        self._pg = conn.pgconn
        self.slot = slot
        options = sql.SQL(
            "(proto_version '1', publication_names {pub}, messages {msg})").format(
            pub=sql.Literal(sql.Identifier(publication).as_string(conn)),
            msg=sql.Literal("true" if messages else "false"))
        query = sql.SQL("START_REPLICATION SLOT {slot} LOGICAL {lsn} {opts}").format(
            slot=sql.Identifier(slot), lsn=sql.SQL(format_lsn(start_lsn)), opts=options)
        self._pg.send_query(query.as_bytes(conn))
        result = self._pg.get_result()
        if result is None or result.status != pq.ExecStatus.COPY_BOTH:
            message = self._pg.get_error_message().strip()
            raise ReplicationError(
                f"START_REPLICATION on slot {slot} at {format_lsn(start_lsn)} failed: {message}")
        self._fileno = self._pg.socket

    def read(self, timeout: float) -> memoryview | None:
        """The next CopyData frame, or None when none arrived within ``timeout`` seconds."""
        pg = self._pg
        nbytes, data = pg.get_copy_data(1)
        if nbytes > 0:
            return data
        if nbytes == 0:
            ready, _, _ = select.select([self._fileno], [], [], timeout)
            if ready:
                pg.consume_input()
                nbytes, data = pg.get_copy_data(1)
                if nbytes > 0:
                    return data
            if nbytes == 0:
                return None
        # -1: the server ended the COPY (error or shutdown)
        result = pg.get_result()
        message = pg.get_error_message().strip()
        if result is not None and result.error_message:
            message = result.get_error_message().strip()
        raise ConnectionLost(f"replication stream on slot {self.slot} ended: {message or 'server closed the stream'}")

    def send_status(self, write_lsn: int, flush_lsn: int, reply: bool = False) -> None:
        """Standby status update: ``flush_lsn`` is what the slot may forget."""
        frame = encode_standby_status(write_lsn, flush_lsn, flush_lsn, now_pg_us(), reply)
        pg = self._pg
        if pg.put_copy_data(frame) != 1:
            raise ConnectionLost(f"cannot send standby status on slot {self.slot}: "
                                   + pg.get_error_message())
        pg.flush()

    def finish(self, timeout: float = 5.0) -> None:
        """End the COPY so the server reads our last standby status before we hang up.

        Closing the socket right after the last status can lose it: the slot would then resume
        from the status before (harmless, the sink skips repeats, but avoidable).
        """
        pg = self._pg
        try:
            pg.put_copy_end()
            pg.flush()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                nbytes, _ = pg.get_copy_data(1)
                if nbytes == -1:
                    break
                if nbytes == 0:
                    select.select([self._fileno], [], [], 0.1)
                    pg.consume_input()
            while pg.get_result() is not None:
                pass
        except Exception:  # the stream is ending anyway; a broken one has nothing to finish
            pass

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:  # closing a broken connection: nothing left to save
            pass
