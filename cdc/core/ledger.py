"""The cloud's bookkeeping, the ``tributary`` schema: the one owner of every statement on it.

The sink keeps its progress in the cloud database, in the same transaction as the rows, so a
restore of the cloud from a backup rewinds them together and the sink catches up from Kafka:

- ``offsets``: per consumer group, topic and partition, the next Kafka offset to read;
- ``sites``: per site, the identity of its LSN stream (system id, timeline, slot), the last site
  transaction applied, the site's WAL position last reported, and its earlier identities;
- ``site_columns``: per site and cloud table, each site column (name, attnum) and the cloud
  column it lands in (they differ after a rename at another site);
- ``site_tables``: per site and cloud table, the OID of the site table, to notice one dropped
  and created again, and which site table it is;
- ``replays``: ``cdc replay --reapply``: apply again up to an LSN (only some tables if set);
- ``site_status``: ``stopped`` with the error while the sink holds a site back;
- ``dead_letters``: site transactions sent to the dead-letter topic, and their copy.

Every function runs its statements on the caller's connection, inside the caller's transaction;
none opens one. Identifiers go through :mod:`psycopg.sql`; values are parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Protocol, Sequence

from psycopg import sql

from cdc.core.errors import Fenced
from cdc.core.lsn import format_lsn, parse_lsn

SCHEMA = "tributary"
#: a partition's offset before anything of it was applied: read from its beginning (the value
#: of confluent_kafka.OFFSET_BEGINNING, kept so in tributary.offsets)
FROM_BEGINNING = -2
#: the advisory lock every change of cloud DDL (ours and the cloud tables') takes
DDL_LOCK = sql.SQL("SELECT pg_advisory_xact_lock(hashtext('tributary.ddl'))")

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the ledger needs of a connection: psycopg's ``Connection.execute``."""

    def execute(self, query: Any, params: Any = None) -> Cursor: ...


@dataclass(frozen=True, slots=True)
class Identity:
    """Which stream of LSNs a site's positions belong to."""

    system_id: str
    timeline: int
    slot: str


@dataclass(frozen=True, slots=True)
class AppliedTx:
    """The last site transaction applied to the cloud (stored with the rows)."""

    identity: Identity
    xid: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int  # unix microseconds


def _t(name: str) -> sql.Identifier:
    return sql.Identifier(SCHEMA, name)


def us_to_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def datetime_to_us(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)


_DDL = [
    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        group_id text NOT NULL, topic text NOT NULL, kafka_partition integer NOT NULL,
        next_offset bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (group_id, topic, kafka_partition))""").format(_t("offsets")),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        site_id text PRIMARY KEY, system_id text NOT NULL, timeline integer NOT NULL,
        slot text NOT NULL, xid bigint NOT NULL, commit_lsn pg_lsn NOT NULL,
        end_lsn pg_lsn NOT NULL, commit_ts timestamptz NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT clock_timestamp())""").format(_t("sites")),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        site_id text NOT NULL, table_schema text NOT NULL, table_name text NOT NULL,
        site_name text NOT NULL, attnum integer, cloud_name text NOT NULL,
        PRIMARY KEY (site_id, table_schema, table_name, site_name))""").format(
        _t("site_columns")),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        site_id text PRIMARY KEY, until_lsn pg_lsn NOT NULL, tables text[],
        requested_at timestamptz NOT NULL DEFAULT now())""").format(_t("replays")),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        site_id text PRIMARY KEY, state text NOT NULL, error text,
        updated_at timestamptz NOT NULL DEFAULT now())""").format(_t("site_status")),
    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS site_lsn pg_lsn").format(_t("sites")),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        site_id text NOT NULL, table_schema text NOT NULL, table_name text NOT NULL,
        relid bigint NOT NULL, PRIMARY KEY (site_id, table_schema, table_name))""").format(
        _t("site_tables")),
    # [{"system_id", "timeline", "slot", "commit_lsn"}]: the last commit LSN under each
    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS earlier jsonb").format(_t("sites")),
    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS site_table text").format(
        _t("site_tables")),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        site_id text NOT NULL, topic text NOT NULL, kafka_partition integer NOT NULL,
        first_offset bigint NOT NULL, last_offset bigint NOT NULL, commit_lsn pg_lsn NOT NULL,
        xid bigint NOT NULL, tables text[] NOT NULL, reason text NOT NULL,
        dead_letter_topic text NOT NULL, dlt_first_offset bigint NOT NULL,
        dlt_last_offset bigint NOT NULL, state text NOT NULL DEFAULT 'pending',
        recorded_at timestamptz NOT NULL DEFAULT now(), replayed_at timestamptz,
        PRIMARY KEY (site_id, topic, kafka_partition, first_offset))""").format(
        _t("dead_letters")),
]


def ensure_schema(conn: Connection) -> None:
    """Create or bring up to date the bookkeeping tables; call inside a transaction."""
    conn.execute(DDL_LOCK)
    for stmt in _DDL:
        conn.execute(stmt)


# -- offsets ------------------------------------------------------------------------------------

def load_offsets(conn: Connection, group_id: str) -> dict[tuple[str, int], int]:
    rows = conn.execute(sql.SQL(
        "SELECT topic, kafka_partition, next_offset FROM {} WHERE group_id = %s"
        " AND next_offset >= 0").format(_t("offsets")), (group_id,)).fetchall()
    return {(r[0], r[1]): r[2] for r in rows}


def register_partitions(conn: Connection, group_id: str,
                        partitions: Iterable[tuple[str, int]]) -> None:
    """Give every assigned partition an offsets row, so :func:`claim` always has one to lock."""
    for topic, partition in partitions:
        conn.execute(sql.SQL(
            "INSERT INTO {} (group_id, topic, kafka_partition, next_offset) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (group_id, topic, kafka_partition) DO NOTHING").format(_t("offsets")),
            (group_id, topic, partition, FROM_BEGINNING))


def claim(conn: Connection, group_id: str, topic: str, partition: int, expected: int) -> None:
    """The fence, first in every cloud transaction that applies a partition's records: lock its
    offsets row and check that it still holds the offset this sink read from. Another replica
    that applied meanwhile (a frozen replica waking up with a batch in hand, a rebalance) has
    moved it: then nothing of this transaction may commit. The lock makes two replicas'
    transactions on one partition take turns, so the second always sees the first's offset."""
    row = conn.execute(sql.SQL(
        "SELECT next_offset FROM {} WHERE group_id = %s AND topic = %s AND kafka_partition = %s"
        " FOR UPDATE").format(_t("offsets")), (group_id, topic, partition)).fetchone()
    if row is None or row[0] != expected:
        raise Fenced(f"{topic}[{partition}]: the cloud holds offset "
                     f"{None if row is None else row[0]}, this sink read from {expected}: "
                     f"another replica of group {group_id!r} applied it; rolled back")


def save_offset(conn: Connection, group_id: str, topic: str, partition: int,
                next_offset: int) -> None:
    """Move a partition's offset (the sink after applying; ``cdc replay`` to rewind it)."""
    conn.execute(sql.SQL(
        "INSERT INTO {} (group_id, topic, kafka_partition, next_offset) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (group_id, topic, kafka_partition)"
        " DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()").format(
        _t("offsets")), (group_id, topic, partition, next_offset))


# -- sites --------------------------------------------------------------------------------------

def load_sites(conn: Connection) -> dict[str, AppliedTx]:
    rows = conn.execute(sql.SQL(
        "SELECT site_id, system_id, timeline, slot, xid, commit_lsn::text, end_lsn::text, commit_ts"
        " FROM {}").format(_t("sites"))).fetchall()
    out = {}
    for site, system_id, tli, slot, xid, commit_lsn, end_lsn, commit_ts in rows:
        out[site] = AppliedTx(Identity(system_id, tli, slot), xid, parse_lsn(commit_lsn),
                              parse_lsn(end_lsn), datetime_to_us(commit_ts))
    return out


def load_earlier(conn: Connection) -> dict[str, dict[Identity, int]]:
    """Per site, its earlier identities and the last commit LSN applied under each."""
    rows = conn.execute(sql.SQL("SELECT site_id, earlier FROM {} WHERE earlier IS NOT NULL")
                        .format(_t("sites"))).fetchall()
    return {site: {Identity(e["system_id"], e["timeline"], e["slot"]): e["commit_lsn"]
                   for e in earlier} for site, earlier in rows}


def save_site(conn: Connection, site_id: str, tx: AppliedTx,
              site_lsn: int | None = None, earlier: dict[Identity, int] | None = None) -> None:
    known = None if not earlier else json.dumps([
        {"system_id": i.system_id, "timeline": i.timeline, "slot": i.slot, "commit_lsn": lsn}
        for i, lsn in earlier.items()])
    conn.execute(sql.SQL(
        "INSERT INTO {} AS s (site_id, system_id, timeline, slot, xid, commit_lsn, end_lsn,"
        " commit_ts, site_lsn, earlier) VALUES (%s, %s, %s, %s, %s, %s::pg_lsn, %s::pg_lsn, %s,"
        " %s::pg_lsn, %s::jsonb) ON CONFLICT (site_id) DO UPDATE SET"
        " system_id = EXCLUDED.system_id, timeline = EXCLUDED.timeline, slot = EXCLUDED.slot, xid = EXCLUDED.xid,"
        " commit_lsn = EXCLUDED.commit_lsn, end_lsn = EXCLUDED.end_lsn,"
        " commit_ts = EXCLUDED.commit_ts, applied_at = clock_timestamp(),"
        " site_lsn = coalesce(EXCLUDED.site_lsn, s.site_lsn),"
        " earlier = coalesce(EXCLUDED.earlier, s.earlier)").format(_t("sites")),
        (site_id, tx.identity.system_id, tx.identity.timeline, tx.identity.slot, tx.xid,
         format_lsn(tx.commit_lsn), format_lsn(tx.end_lsn), us_to_datetime(tx.commit_ts),
         None if site_lsn is None else format_lsn(site_lsn), known))


def applied_end_lsn(conn: Connection, site_id: str) -> int | None:
    """The end LSN of the site's last transaction the cloud applied, if any."""
    row = conn.execute(sql.SQL("SELECT end_lsn::text FROM {} WHERE site_id = %s").format(
        _t("sites")), (site_id,)).fetchone()
    return None if row is None else parse_lsn(row[0])


def site_progress(conn: Connection) -> list[tuple[str, str, datetime, int | None]]:
    """Per site: commit LSN and time of the last transaction applied, and its lag in bytes
    (the site's last reported WAL position past that transaction's end)."""
    return conn.execute(sql.SQL(
        "SELECT site_id, commit_lsn::text, commit_ts, greatest(site_lsn - end_lsn, 0)"
        " FROM {} ORDER BY site_id").format(_t("sites"))).fetchall()


def forget_site(conn: Connection, site_id: str, topic: str) -> None:
    """Drop what the cloud knows of a site (``cdc sink remove-site``, after its rows): a topic
    of the same name starts over."""
    for table in ("site_columns", "site_tables", "sites"):
        conn.execute(sql.SQL("DELETE FROM {} WHERE site_id = %s").format(_t(table)), (site_id,))
    conn.execute(sql.SQL("DELETE FROM {} WHERE topic = %s").format(_t("offsets")), (topic,))


# -- site tables and columns --------------------------------------------------------------------

def tables_of_site(conn: Connection, site_id: str) -> list[tuple[str, str]]:
    """The cloud tables a site wrote to (recorded as the sink prepares each table)."""
    return conn.execute(sql.SQL(
        "SELECT DISTINCT table_schema, table_name FROM {} WHERE site_id = %s ORDER BY 1, 2"
    ).format(_t("site_columns")), (site_id,)).fetchall()


def site_columns(conn: Connection, site_id: str, schema: str,
                 table: str) -> dict[str, tuple[int | None, str]]:
    """A site's columns in a cloud table: site name -> (attnum, cloud column)."""
    rows = conn.execute(sql.SQL(
        "SELECT site_name, attnum, cloud_name FROM {} WHERE site_id = %s AND table_schema = %s"
        " AND table_name = %s").format(_t("site_columns")), (site_id, schema, table)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def save_site_columns(conn: Connection, site_id: str, schema: str, table: str,
                      columns: Sequence[tuple[str, int | None, str]]) -> None:
    """Record (site name, attnum, cloud column) of a site's columns in a cloud table."""
    for name, attnum, cloud in columns:
        conn.execute(sql.SQL(
            "INSERT INTO {} (site_id, table_schema, table_name, site_name, attnum, cloud_name)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (site_id, table_schema, table_name,"
            " site_name) DO UPDATE SET cloud_name = excluded.cloud_name,"
            # a version read after a later rename has no attnum for the old name: keep it
            " attnum = coalesce(excluded.attnum, {}.attnum)"
        ).format(_t("site_columns"), sql.Identifier("site_columns")),
            (site_id, schema, table, name, attnum, cloud))


def forget_site_column(conn: Connection, site_id: str, schema: str, table: str,
                       site_name: str) -> None:
    conn.execute(sql.SQL("DELETE FROM {} WHERE site_id = %s AND table_schema = %s"
                         " AND table_name = %s AND site_name = %s").format(_t("site_columns")),
                 (site_id, schema, table, site_name))


def forget_site_columns(conn: Connection, site_id: str, schema: str, table: str) -> None:
    conn.execute(sql.SQL("DELETE FROM {} WHERE site_id = %s AND table_schema = %s AND"
                         " table_name = %s").format(_t("site_columns")), (site_id, schema, table))


def rename_cloud_column(conn: Connection, schema: str, table: str, old: str, new: str) -> None:
    """Every site whose column lands in the old cloud column follows it."""
    conn.execute(sql.SQL(
        "UPDATE {} SET cloud_name = %s WHERE table_schema = %s AND table_name = %s"
        " AND cloud_name = %s").format(_t("site_columns")), (new, schema, table, old))


def site_table(conn: Connection, site_id: str, schema: str,
               table: str) -> tuple[int, str | None] | None:
    """(OID, qualified name) of the site table that lands in a cloud table, if recorded."""
    row = conn.execute(sql.SQL("SELECT relid, site_table FROM {} WHERE site_id = %s AND"
                               " table_schema = %s AND table_name = %s").format(_t("site_tables")),
                       (site_id, schema, table)).fetchone()
    return None if row is None else (row[0], row[1])


def save_site_table(conn: Connection, site_id: str, schema: str, table: str, relid: int,
                    qualified: str) -> None:
    conn.execute(sql.SQL(
        "INSERT INTO {} (site_id, table_schema, table_name, relid, site_table) VALUES"
        " (%s, %s, %s, %s, %s) ON CONFLICT (site_id, table_schema, table_name) DO UPDATE"
        " SET relid = excluded.relid, site_table = excluded.site_table"
    ).format(_t("site_tables")), (site_id, schema, table, relid, qualified))


# -- replays ------------------------------------------------------------------------------------

def request_replay(conn: Connection, site_id: str, until_lsn: int,
                   tables: Sequence[str] | None) -> None:
    """``cdc replay --reapply``: transactions up to ``until_lsn`` apply again."""
    conn.execute(sql.SQL(
        "INSERT INTO {} (site_id, until_lsn, tables) VALUES (%s, %s::pg_lsn, %s)"
        " ON CONFLICT (site_id) DO UPDATE SET until_lsn = EXCLUDED.until_lsn,"
        " tables = EXCLUDED.tables, requested_at = now()").format(_t("replays")),
        (site_id, format_lsn(until_lsn), list(tables) if tables else None))


def load_replays(conn: Connection) -> dict[str, tuple[int, frozenset[str] | None]]:
    rows = conn.execute(sql.SQL("SELECT site_id, until_lsn::text, tables FROM {}").format(
        _t("replays"))).fetchall()
    return {r[0]: (parse_lsn(r[1]), frozenset(r[2]) if r[2] else None) for r in rows}


def finish_replay(conn: Connection, site_id: str, commit_lsn: int) -> None:
    """In the cloud transaction that applies past a replay's end: the replay is done."""
    conn.execute(sql.SQL("DELETE FROM {} WHERE site_id = %s AND until_lsn <= %s::pg_lsn").format(
        _t("replays")), (site_id, format_lsn(commit_lsn)))


# -- site status --------------------------------------------------------------------------------

def mark_stopped(conn: Connection, site_id: str, error: str) -> None:
    """Record that the sink holds a site back (on a connection of the caller's own: the main
    one may be inside a transaction that is being rolled back)."""
    conn.execute(sql.SQL(
        "INSERT INTO {} (site_id, state, error) VALUES (%s, 'stopped', %s) ON CONFLICT"
        " (site_id) DO UPDATE SET state = 'stopped', error = EXCLUDED.error,"
        " updated_at = now()").format(_t("site_status")), (site_id, error[:2000]))


def clear_stopped(conn: Connection, sites: list[str]) -> None:
    """Sites assigned again are tried again: no longer shown as stopped."""
    conn.execute(sql.SQL("DELETE FROM {} WHERE site_id = ANY(%s)").format(_t("site_status")),
                 (sites,))


def stopped_sites(conn: Connection) -> dict[str, str]:
    """Site -> the error the sink holds it back for."""
    rows = conn.execute(sql.SQL("SELECT site_id, error FROM {} WHERE state = 'stopped'").format(
        _t("site_status"))).fetchall()
    return {r[0]: r[1] for r in rows}


# -- dead letters -------------------------------------------------------------------------------

def record_dead_letter(conn: Connection, site_id: str, topic: str, partition: int,
                       first_offset: int, last_offset: int, commit_lsn: int, xid: int,
                       tables: Sequence[str], reason: str, dead_letter_topic: str,
                       dlt_offsets: tuple[int, int]) -> None:
    """In the cloud transaction that moves the site past it: the dead letter's row (a copy
    written again after a crash points to the newer copy)."""
    conn.execute(sql.SQL(
        "INSERT INTO {} (site_id, topic, kafka_partition, first_offset, last_offset, commit_lsn,"
        " xid, tables, reason, dead_letter_topic, dlt_first_offset, dlt_last_offset)"
        " VALUES (%s, %s, %s, %s, %s, %s::pg_lsn, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (site_id, topic, kafka_partition, first_offset) DO UPDATE SET"
        " dead_letter_topic = EXCLUDED.dead_letter_topic,"
        " dlt_first_offset = EXCLUDED.dlt_first_offset,"
        " dlt_last_offset = EXCLUDED.dlt_last_offset, reason = EXCLUDED.reason,"
        " state = 'pending', recorded_at = now()").format(_t("dead_letters")),
        (site_id, topic, partition, first_offset, last_offset, format_lsn(commit_lsn), xid,
         list(tables), reason, dead_letter_topic, dlt_offsets[0], dlt_offsets[1]))


def pending_dead_letters(conn: Connection, sites: list[str]) -> list[tuple[Any, ...]]:
    """The pending dead letters of these sites (all sites when empty), oldest first, as rows
    in the order of the SELECT below (``sinks.dead_letters.DeadLetter``'s fields); the commit
    LSN as text."""
    return conn.execute(sql.SQL(
        "SELECT site_id, topic, kafka_partition, first_offset, last_offset, commit_lsn::text, xid,"
        " tables, reason, dead_letter_topic, dlt_first_offset, dlt_last_offset, state FROM {}"
        " WHERE state = 'pending' AND (cardinality(%s::text[]) = 0 OR site_id = ANY(%s))"
        " ORDER BY site_id, topic, kafka_partition, first_offset").format(_t("dead_letters")),
        (sites, sites)).fetchall()


def mark_dead_letter_replayed(conn: Connection, site_id: str, topic: str, partition: int,
                              first_offset: int) -> None:
    conn.execute(sql.SQL(
        "UPDATE {} SET state = 'replayed', replayed_at = now() WHERE site_id = %s AND topic = %s"
        " AND kafka_partition = %s AND first_offset = %s").format(_t("dead_letters")),
        (site_id, topic, partition, first_offset))


def pending_dead_letter_counts(conn: Connection) -> dict[str, int]:
    """Per site, its transactions in the dead-letter topic not applied again."""
    rows = conn.execute(sql.SQL("SELECT site_id, count(*)::int FROM {} WHERE state = 'pending'"
                                " GROUP BY site_id").format(_t("dead_letters"))).fetchall()
    return {r[0]: r[1] for r in rows}
