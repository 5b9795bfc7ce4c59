"""The sink's progress, kept in the cloud database in the same transaction as the rows.

``tributary.offsets``: per consumer group, topic and partition, the next Kafka offset to read.
``tributary.sites``: per site, the identity of its LSN stream (system id, timeline, slot) and the
last site transaction applied. ``tributary.site_columns``: per site and cloud table, the site's
columns (name, attnum) and the cloud column each lands in; ``tributary.site_tables``: the OID of
the site table, to notice one dropped and re-created. The sink resumes from these and skips transactions already
applied, so repeats change nothing; restoring the cloud database from a backup rewinds them with
the rows, and the sink catches up from Kafka by itself.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from cdc.core.errors import Fenced
from cdc.core.lsn import format_lsn, parse_lsn
from sinks.batcher import FROM_BEGINNING, AppliedTx, Identity
from sinks.sql import META_SCHEMA

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def us_to_datetime(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def datetime_to_us(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)

_DDL = [
    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(META_SCHEMA)),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        group_id text NOT NULL, topic text NOT NULL, kafka_partition integer NOT NULL,
        next_offset bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (group_id, topic, kafka_partition))""").format(
        sql.Identifier(META_SCHEMA, "offsets")),
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        site_id text PRIMARY KEY, system_id text NOT NULL, timeline integer NOT NULL,
        slot text NOT NULL, xid bigint NOT NULL, commit_lsn pg_lsn NOT NULL,
        end_lsn pg_lsn NOT NULL, commit_ts timestamptz NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT clock_timestamp())""").format(
        sql.Identifier(META_SCHEMA, "sites")),
    # per site and cloud table: each site column, its attnum at the site and the cloud column
    # holding it (they differ after a rename at another site); see sinks.tables
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        site_id text NOT NULL, table_schema text NOT NULL, table_name text NOT NULL,
        site_name text NOT NULL, attnum integer, cloud_name text NOT NULL,
        PRIMARY KEY (site_id, table_schema, table_name, site_name))""").format(
        sql.Identifier(META_SCHEMA, "site_columns")),
    # per site: cdc replay --reapply: apply again up to until_lsn (only these tables if set)
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        site_id text PRIMARY KEY, until_lsn pg_lsn NOT NULL, tables text[],
        requested_at timestamptz NOT NULL DEFAULT now())""").format(
        sql.Identifier(META_SCHEMA, "replays")),
    # per site: "stopped" with the error while the sink holds the site back (cdc status)
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        site_id text PRIMARY KEY, state text NOT NULL, error text,
        updated_at timestamptz NOT NULL DEFAULT now())""").format(
        sql.Identifier(META_SCHEMA, "site_status")),
    # the site server's WAL position last reported (Position records): lag in bytes
    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS site_lsn pg_lsn").format(
        sql.Identifier(META_SCHEMA, "sites")),
    # per site and cloud table: the OID of the site table (a new one: dropped and re-created)
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        site_id text NOT NULL, table_schema text NOT NULL, table_name text NOT NULL,
        relid bigint NOT NULL, PRIMARY KEY (site_id, table_schema, table_name))""").format(
        sql.Identifier(META_SCHEMA, "site_tables")),
    # per site: the identities it had before its current one, with the last commit LSN
    # applied under each ([{"system_id", "timeline", "slot", "commit_lsn"}])
    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS earlier jsonb").format(
        sql.Identifier(META_SCHEMA, "sites")),
    # ... and which site table it is: two site tables of one site never share a cloud table
    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS site_table text").format(
        sql.Identifier(META_SCHEMA, "site_tables")),
    # site transactions sent to the dead-letter topic (sinks.dead_letters): where they came
    # from, why, and where their copy is; 'replayed' once cdc replay --dead-letters applied one
    sql.SQL("""CREATE TABLE IF NOT EXISTS {} (
        site_id text NOT NULL, topic text NOT NULL, kafka_partition integer NOT NULL,
        first_offset bigint NOT NULL, last_offset bigint NOT NULL, commit_lsn pg_lsn NOT NULL,
        xid bigint NOT NULL, tables text[] NOT NULL, reason text NOT NULL,
        dead_letter_topic text NOT NULL, dlt_first_offset bigint NOT NULL,
        dlt_last_offset bigint NOT NULL, state text NOT NULL DEFAULT 'pending',
        recorded_at timestamptz NOT NULL DEFAULT now(), replayed_at timestamptz,
        PRIMARY KEY (site_id, topic, kafka_partition, first_offset))""").format(
        sql.Identifier(META_SCHEMA, "dead_letters")),
]


def ensure_schema(conn: psycopg.Connection) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('tributary.ddl'))")
        for stmt in _DDL:
            conn.execute(stmt)


def load_offsets(conn: psycopg.Connection, group_id: str) -> dict[tuple[str, int], int]:
    rows = conn.execute(
        sql.SQL("SELECT topic, kafka_partition, next_offset FROM {} WHERE group_id = %s"
                " AND next_offset >= 0").format(
            sql.Identifier(META_SCHEMA, "offsets")), (group_id,)).fetchall()
    return {(r[0], r[1]): r[2] for r in rows}


def load_sites(conn: psycopg.Connection) -> dict[str, AppliedTx]:
    rows = conn.execute(sql.SQL(
        "SELECT site_id, system_id, timeline, slot, xid, commit_lsn::text, end_lsn::text, commit_ts"
        " FROM {}").format(sql.Identifier(META_SCHEMA, "sites"))).fetchall()
    out = {}
    for site, system_id, tli, slot, xid, commit_lsn, end_lsn, commit_ts in rows:
        us = datetime_to_us(commit_ts)
        out[site] = AppliedTx(Identity(system_id, tli, slot), xid, parse_lsn(commit_lsn),
                              parse_lsn(end_lsn), us)
    return out


def register_partitions(conn: psycopg.Connection, group_id: str,
                        partitions: list[tuple[str, int]]) -> None:
    """Give every assigned partition an offsets row, so :func:`claim` always has one to lock."""
    for topic, partition in partitions:
        conn.execute(sql.SQL(
            "INSERT INTO {} (group_id, topic, kafka_partition, next_offset) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (group_id, topic, kafka_partition) DO NOTHING").format(
            sql.Identifier(META_SCHEMA, "offsets")), (group_id, topic, partition, FROM_BEGINNING))


def claim(conn: psycopg.Connection, group_id: str, topic: str, partition: int,
          expected: int) -> None:
    """The fence, first in every cloud transaction that applies a partition's records: lock its
    offsets row and check that it still holds the offset this sink read from. Another replica
    that applied meanwhile (a frozen replica waking up with a batch in hand, a rebalance) has
    moved it: then nothing of this transaction may commit. The lock makes two replicas'
    transactions on one partition take turns, so the second always sees the first's offset."""
    row = conn.execute(sql.SQL(
        "SELECT next_offset FROM {} WHERE group_id = %s AND topic = %s AND kafka_partition = %s"
        " FOR UPDATE").format(sql.Identifier(META_SCHEMA, "offsets")),
        (group_id, topic, partition)).fetchone()
    if row is None or row[0] != expected:
        raise Fenced(f"{topic}[{partition}]: the cloud holds offset "
                     f"{None if row is None else row[0]}, this sink read from {expected}: "
                     f"another replica of group {group_id!r} applied it; rolled back")


def save_offset(conn: psycopg.Connection, group_id: str, topic: str, partition: int,
                next_offset: int) -> None:
    conn.execute(sql.SQL(
        "INSERT INTO {} (group_id, topic, kafka_partition, next_offset) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (group_id, topic, kafka_partition)"
        " DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()").format(
        sql.Identifier(META_SCHEMA, "offsets")), (group_id, topic, partition, next_offset))


def load_earlier(conn: psycopg.Connection) -> dict[str, dict[Identity, int]]:
    """Per site, its earlier identities and the last commit LSN applied under each."""
    rows = conn.execute(sql.SQL("SELECT site_id, earlier FROM {} WHERE earlier IS NOT NULL")
                        .format(sql.Identifier(META_SCHEMA, "sites"))).fetchall()
    return {site: {Identity(e["system_id"], e["timeline"], e["slot"]): e["commit_lsn"]
                   for e in earlier} for site, earlier in rows}


def save_site(conn: psycopg.Connection, site_id: str, tx: AppliedTx,
              site_lsn: int | None = None, earlier: dict[Identity, int] | None = None) -> None:
    ts = us_to_datetime(tx.commit_ts)
    known = None if not earlier else Jsonb([
        {"system_id": i.system_id, "timeline": i.timeline, "slot": i.slot, "commit_lsn": lsn}
        for i, lsn in earlier.items()])
    conn.execute(sql.SQL(
        "INSERT INTO {} AS s (site_id, system_id, timeline, slot, xid, commit_lsn, end_lsn,"
        " commit_ts, site_lsn, earlier) VALUES (%s, %s, %s, %s, %s, %s::pg_lsn, %s::pg_lsn, %s,"
        " %s::pg_lsn, %s) ON CONFLICT (site_id) DO UPDATE SET system_id = EXCLUDED.system_id,"
        " timeline = EXCLUDED.timeline, slot = EXCLUDED.slot, xid = EXCLUDED.xid,"
        " commit_lsn = EXCLUDED.commit_lsn, end_lsn = EXCLUDED.end_lsn,"
        " commit_ts = EXCLUDED.commit_ts, applied_at = clock_timestamp(),"
        " site_lsn = coalesce(EXCLUDED.site_lsn, s.site_lsn),"
        " earlier = coalesce(EXCLUDED.earlier, s.earlier)").format(
        sql.Identifier(META_SCHEMA, "sites")),
        (site_id, tx.identity.system_id, tx.identity.timeline, tx.identity.slot, tx.xid,
         format_lsn(tx.commit_lsn), format_lsn(tx.end_lsn), ts,
         None if site_lsn is None else format_lsn(site_lsn), known))


def mark_stopped(dsn: str, site_id: str, error: str) -> None:
    """Record that the sink holds a site back, on a connection of its own (the main one may be
    inside a transaction that is being rolled back)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(
            "INSERT INTO {} (site_id, state, error) VALUES (%s, 'stopped', %s) ON CONFLICT"
            " (site_id) DO UPDATE SET state = 'stopped', error = EXCLUDED.error,"
            " updated_at = now()").format(sql.Identifier(META_SCHEMA, "site_status")),
            (site_id, error[:2000]))


def clear_stopped(conn: psycopg.Connection, sites: list[str]) -> None:
    """Sites assigned again are tried again: no longer shown as stopped."""
    conn.execute(sql.SQL("DELETE FROM {} WHERE site_id = ANY(%s)").format(
        sql.Identifier(META_SCHEMA, "site_status")), (sites,))


def load_replays(conn: psycopg.Connection) -> dict[str, tuple[int, frozenset[str] | None]]:
    rows = conn.execute(sql.SQL("SELECT site_id, until_lsn::text, tables FROM {}").format(
        sql.Identifier(META_SCHEMA, "replays"))).fetchall()
    return {r[0]: (parse_lsn(r[1]), frozenset(r[2]) if r[2] else None) for r in rows}


def finish_replay(conn: psycopg.Connection, site_id: str, commit_lsn: int) -> None:
    """In the cloud transaction that applies past a replay's end: the replay is done."""
    conn.execute(sql.SQL("DELETE FROM {} WHERE site_id = %s AND until_lsn <= %s::pg_lsn").format(
        sql.Identifier(META_SCHEMA, "replays")), (site_id, format_lsn(commit_lsn)))
