"""Slot and publication management at a site, and the catalog facts the source reads beside the stream.

The source creates its publication and slot when missing and never drops them: dropping a slot
loses the changes it holds. Table selection is by ``schema.table`` glob patterns
(``site.tables`` minus ``site.exclude``), resolved against the catalog.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import Any, Callable

import psycopg
from psycopg import sql

from cdc.core import site_ledger
from cdc.core.errors import ReplicationError
from cdc.core.lsn import parse_lsn
from cdc.source.timescale import (CHUNK_SCHEMA, INTERNAL_SCHEMAS, ChunkRange, Hypertable,
                           chunk_hypertable_id)
from cdc.core.types.catalog import TypeRow, describe
from cdc.core.types.values import ColumnType, TypeLookup

log = logging.getLogger(__name__)

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1  # an unbounded side of a dimension slice


@dataclass(frozen=True, slots=True)
class SiteTable:
    """A table at the site and what logical replication needs to know about it."""

    schema: str
    name: str
    replica_identity: str  # d, n, f, i
    has_primary_key: bool
    has_identity_index: bool

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def identity_problem(self) -> str | None:
        """Why updates and deletes of this table cannot be replicated, or None."""
        ri = self.replica_identity
        if ri == "f" or (ri == "i" and self.has_identity_index) or (ri == "d" and self.has_primary_key):
            return None
        if ri == "n":
            return (f"{self.qualified}: REPLICA IDENTITY NOTHING: updates and deletes cannot be "
                    f"replicated; run ALTER TABLE {self.qualified} REPLICA IDENTITY DEFAULT "
                    "(with a primary key) or FULL")
        return (f"{self.qualified}: no primary key or replica identity index: add a primary key, or "
                f"run ALTER TABLE {self.qualified} REPLICA IDENTITY FULL")


def matches(qualified: str, include: list[str], exclude: list[str]) -> bool:
    """Whether ``schema.table`` is selected by the include and exclude glob patterns."""
    return (any(fnmatch.fnmatchcase(qualified, p) for p in include)
            and not any(fnmatch.fnmatchcase(qualified, p) for p in exclude))


_TABLES_SQL = """
SELECT n.nspname, c.relname, c.relreplident,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE '_timescaledb%'
  AND n.nspname <> 'tributary'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')  -- an extension's own (spatial_ref_sys)
ORDER BY 1, 2
"""


def list_tables(conn: psycopg.Connection, include: list[str], exclude: list[str]) -> list[SiteTable]:
    """The site tables the patterns select."""
    rows = conn.execute(_TABLES_SQL).fetchall()
    return [SiteTable(r[0], r[1], r[2], r[3], r[4]) for r in rows
            if matches(f"{r[0]}.{r[1]}", include, exclude)]


def publication_tables(conn: psycopg.Connection, name: str) -> set[tuple[str, str]] | None:
    """The tables a publication holds; None when it does not exist or is FOR ALL TABLES."""
    row = conn.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s",
                       (name,)).fetchone()
    if row is None or row[0]:
        return None
    return {(r[0], r[1]) for r in conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (name,))}


def ensure_publication(conn: psycopg.Connection, name: str, tables: list[SiteTable],
                       selected: Callable[[str], bool] | None = None,
                       chunks: bool = False) -> list[SiteTable]:
    """Create the publication for ``tables`` or add the ones it lacks; with ``selected``, drop
    the tables it holds that the patterns no longer select. With ``chunks`` (a TimescaleDB site
    with selected hypertables) it also holds every chunk, ``TABLES IN SCHEMA
    _timescaledb_internal``: a new chunk is in it from its first row, with no step to add it
    (:mod:`cdc.source.timescale` keeps the data changes). Returns the tables added."""
    if not tables and not chunks:
        raise ReplicationError(f"publication {name}: site.tables selects no table that can be "
                               "replicated")
    exists = conn.execute("SELECT puballtables FROM pg_publication WHERE pubname = %s",
                          (name,)).fetchone()
    chunk_schema = sql.SQL("TABLES IN SCHEMA {}").format(sql.Identifier(CHUNK_SCHEMA))
    if exists is None:
        parts = []
        if tables:
            parts.append(sql.SQL("TABLE {}").format(sql.SQL(", ").join(
                sql.Identifier(t.schema, t.name) for t in tables)))
        if chunks:
            parts.append(chunk_schema)
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR {} WITH (publish_via_partition_root"
                             " = true)").format(sql.Identifier(name), sql.SQL(", ").join(parts)))
        log.info("created publication", extra={"publication": name, "tables": len(tables),
                                                "timescaledb_chunks": chunks})
        return list(tables)
    _publish_via_root(conn, name)
    if exists[0]:
        return []  # FOR ALL TABLES: nothing to add
    if chunks and conn.execute(
            "SELECT 1 FROM pg_publication_namespace pn JOIN pg_publication p ON p.oid = pn.pnpubid"
            " WHERE p.pubname = %s AND pn.pnnspid = %s::regnamespace",
            (name, CHUNK_SCHEMA)).fetchone() is None:
        conn.execute(sql.SQL("ALTER PUBLICATION {} ADD {}").format(sql.Identifier(name),
                                                                  chunk_schema))
        log.info("added TimescaleDB chunks to publication", extra={"publication": name})
    have = publication_tables(conn, name) or set()
    missing = [t for t in tables if (t.schema, t.name) not in have]
    if missing:
        conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
            sql.Identifier(name), sql.SQL(", ").join(
                sql.Identifier(t.schema, t.name) for t in missing)))
        log.info("added tables to publication", extra={
            "publication": name, "added": [t.qualified for t in missing]})
    if selected is not None:
        unwanted = sorted(t for t in have if t[0] != CHUNK_SCHEMA
                          and not selected(f"{t[0]}.{t[1]}"))
        if unwanted:
            conn.execute(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(
                sql.Identifier(name), sql.SQL(", ").join(
                    sql.Identifier(*t) for t in unwanted)))
            log.info("dropped tables site.tables no longer selects from the publication",
                     extra={"publication": name, "dropped": [f"{s}.{t}" for s, t in unwanted]})
    return missing


def _publish_via_root(conn: psycopg.Connection, name: str) -> None:
    """A partitioned table is one table: its changes must arrive under its own name, as the
    snapshot copies it, not under each partition's (a publication made beforehand may lack
    the setting; changing it needs ownership of the publication)."""
    row = conn.execute("SELECT pubviaroot FROM pg_publication WHERE pubname = %s",
                       (name,)).fetchone()
    if row is not None and not row[0]:
        conn.execute(sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = true)")
                     .format(sql.Identifier(name)))
        log.info("publication now publishes partitions as their partitioned table",
                 extra={"publication": name})


def timescaledb_version(conn: psycopg.Connection) -> str | None:
    """The TimescaleDB extension's version in the site database, or None."""
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
                       ).fetchone()
    return str(row[0]) if row else None


def hypertables(conn: psycopg.Connection) -> set[tuple[str, str]]:
    """The site's data hypertables (not TimescaleDB's internal compressed ones)."""
    rows = conn.execute("SELECT schema_name, table_name FROM _timescaledb_catalog.hypertable"
                        ).fetchall()
    return {(r[0], r[1]) for r in rows if r[0] not in INTERNAL_SCHEMAS}


class ChunkCatalog:
    """:data:`cdc.source.timescale.ChunkLookup` on the site catalog: by chunk name, else by the
    hypertable id in the name (a chunk dropped since, e.g. by a retention policy)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    def hypertable(self, schema: str, table: str) -> Hypertable | None:
        """The hypertable of this name (for a snapshot, which reads the hypertable itself)."""
        row = self._conn.execute(self._SELECT + " WHERE h.schema_name = %s AND h.table_name = %s",
                                 (schema, table)).fetchone()
        return self._hypertable(row)

    @staticmethod
    def _hypertable(row: Any) -> Hypertable | None:
        if row is None:
            return None
        return Hypertable(row[0], row[1], int(row[2]) if row[2] is not None else None,
                          row[3], int(row[4]) if row[4] is not None else None)

    _SELECT = ("SELECT h.schema_name, h.table_name,"
               " to_regclass(format('%%I.%%I', h.schema_name, h.table_name))::oid,"
               " d.column_name, d.interval_length FROM _timescaledb_catalog.hypertable h"
               " LEFT JOIN LATERAL (SELECT column_name, interval_length"
               "   FROM _timescaledb_catalog.dimension WHERE hypertable_id = h.id"
               "   AND interval_length IS NOT NULL ORDER BY id LIMIT 1) d ON true")

    def chunk_range(self, schema: str, table: str) -> ChunkRange | None:
        """The chunk's slice of its hypertable's time dimension (the one
        :class:`Hypertable` names), or None when the catalog no longer has the chunk."""
        # the public views: the catalog tables behind them changed shape between versions
        try:
            row = self._conn.execute(
                "SELECT c.primary_dimension,"
                " CASE WHEN c.range_start IS NULL THEN c.range_start_integer"
                "  WHEN isfinite(c.range_start)"
                "  THEN (extract(epoch FROM c.range_start) * 1000000)::bigint END,"
                " CASE WHEN c.range_end IS NULL THEN c.range_end_integer"
                "  WHEN isfinite(c.range_end)"
                "  THEN (extract(epoch FROM c.range_end) * 1000000)::bigint END,"
                " (SELECT count(*) FROM timescaledb_information.dimensions d"
                "  WHERE d.hypertable_schema = c.hypertable_schema"
                "  AND d.hypertable_name = c.hypertable_name)"
                " FROM timescaledb_information.chunks c"
                " WHERE c.chunk_schema = %s AND c.chunk_name = %s", (schema, table)).fetchone()
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:  # a TimescaleDB without these views: keep the rows
            log.warning("cannot read a chunk's time range", extra={
                "chunk": f"{schema}.{table}", "error": str(exc).strip()})
            return None
        if row is None or row[0] is None:
            return None
        column, start, end, dimensions = row
        return ChunkRange(column, None if start is None or start <= INT64_MIN else int(start),
                          None if end is None or end >= INT64_MAX else int(end),
                          space=int(dimensions or 0) > 1)

    def __call__(self, schema: str, table: str) -> Hypertable | None:
        select = self._SELECT
        row = self._conn.execute(
            select + " JOIN _timescaledb_catalog.chunk c ON c.hypertable_id = h.id"
            " WHERE c.schema_name = %s AND c.table_name = %s", (schema, table)).fetchone()
        if row is None:
            hypertable_id = chunk_hypertable_id(table)
            if hypertable_id is not None:
                row = self._conn.execute(select + " WHERE h.id = %s",
                                         (hypertable_id,)).fetchone()
        return self._hypertable(row)


@dataclass(frozen=True, slots=True)
class SlotState:
    name: str
    confirmed_flush_lsn: int
    restart_lsn: int
    wal_status: str | None


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


class SiteCatalog:
    """The catalog queries :func:`cdc.core.types.catalog.describe` needs, on a site connection."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn

    def type_row(self, oid: int, typmod: int) -> TypeRow | None:
        row = self._conn.execute(
            "SELECT t.typtype, n.nspname, t.typname, format_type(t.oid, %s), t.typbasetype,"
            " t.typtypmod, t.typelem, t.typcategory = 'A', t.typrelid,"
            " (SELECT e.extname FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid"
            "   WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e'"
            "   AND d.refclassid = 'pg_extension'::regclass LIMIT 1)"
            " FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = %s",
            (typmod, oid)).fetchone()
        if row is None:
            return None
        return TypeRow(typtype=row[0], schema=row[1], name=row[2], formatted=row[3],
                       base_oid=int(row[4]), base_typmod=int(row[5]), element_oid=int(row[6]),
                       is_array=bool(row[7]), relation_oid=int(row[8]), extension=row[9])

    def enum_labels(self, oid: int) -> list[str]:
        rows = self._conn.execute("SELECT enumlabel FROM pg_enum WHERE enumtypid = %s"
                                  " ORDER BY enumsortorder", (oid,)).fetchall()
        return [r[0] for r in rows]

    def attributes(self, relation_oid: int) -> list[tuple[str, int, int]]:
        rows = self._conn.execute(
            "SELECT attname, atttypid, atttypmod FROM pg_attribute WHERE attrelid = %s"
            " AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (relation_oid,)).fetchall()
        return [(r[0], int(r[1]), int(r[2])) for r in rows]

    def range_subtype(self, oid: int) -> tuple[int, int]:
        row = self._conn.execute("SELECT rngsubtype, -1 FROM pg_range WHERE rngtypid = %s",
                                 (oid,)).fetchone()
        if row is None:
            raise LookupError(f"range type OID {oid} has no pg_range entry")
        return int(row[0]), int(row[1])

    def multirange_range(self, oid: int) -> int:
        row = self._conn.execute("SELECT rngtypid FROM pg_range WHERE rngmultitypid = %s",
                                 (oid,)).fetchone()
        if row is None:
            raise LookupError(f"multirange type OID {oid} has no pg_range entry")
        return int(row[0])


class CatalogTypeLookup:
    """A cached lookup of types the built-in table does not know (:mod:`cdc.core.types.catalog`);
    ``forget()`` drops the cache when the stream says a type may have changed."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._catalog = SiteCatalog(conn)
        self._cache: dict[tuple[int, int], ColumnType] = {}

    def __call__(self, oid: int, typmod: int) -> ColumnType:
        key = (oid, typmod)
        if key not in self._cache:
            self._cache[key] = describe(oid, typmod, self._catalog)
        return self._cache[key]

    def forget(self) -> None:
        self._cache.clear()


def type_lookup(conn: psycopg.Connection) -> TypeLookup:
    return CatalogTypeLookup(conn)


def primary_key_lookup(conn: psycopg.Connection):  # -> cdc.source.relations.KeyLookup
    """Primary key column names by relation OID, for REPLICA IDENTITY FULL tables."""
    def lookup(oid: int) -> tuple[str, ...] | None:
        rows = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::oid AND i.indisprimary"
            " ORDER BY array_position(i.indkey::int2[], a.attnum)", (oid,)).fetchall()
        return tuple(r[0] for r in rows) or None
    return lookup


def dropped_relations(conn: psycopg.Connection, oids: set[int]) -> tuple[set[int], int]:
    """Which of these relation OIDs are gone from ``pg_class``, and the site's WAL insert
    position read after the statement's snapshot: every drop it saw committed before that
    position (the rule of :mod:`cdc.source.dropped`). Only outside a transaction: an older snapshot
    would not see relations created since, and call them gone; then nothing is reported."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        return set(), 0
    row = conn.execute(
        "SELECT ARRAY(SELECT o FROM unnest(%s::bigint[]::oid[]) o WHERE NOT EXISTS"
        " (SELECT 1 FROM pg_class c WHERE c.oid = o)), pg_current_wal_insert_lsn()::text",
        (sorted(oids),)).fetchone()
    if row is None:
        raise ReplicationError("site catalog: no answer to the dropped-relations query")
    return {int(o) for o in row[0]}, parse_lsn(row[1])


def column_lookup(conn: psycopg.Connection):  # -> cdc.source.relations.ColumnLookup
    """Column attnums (to tell a rename from a drop and an add) and the value rows older than
    an added column read for it (``attmissingval``, set by ADD COLUMN ... DEFAULT)."""
    def lookup(oid: int) -> dict[str, tuple[int, str | None]]:
        rows = conn.execute(
            "SELECT attname, attnum, CASE WHEN atthasmissing"
            " THEN (attmissingval::text::text[])[1] END FROM pg_attribute"
            " WHERE attrelid = %s::oid AND attnum > 0 AND NOT attisdropped", (oid,)).fetchall()
        return {r[0]: (int(r[1]), r[2]) for r in rows}
    return lookup


def unchanged_lookup(conn: psycopg.Connection):  # -> cdc.source.event_builder.UnchangedLookup
    """The text of columns a key-moving update left unchanged (TOAST), from the site's row at
    its new key as it is now: pgoutput does not send them (see EventBuilder._fill_unchanged)."""
    def lookup(info: Any, key: dict[str, bytes], columns: list[str]
               ) -> dict[str, bytes | None] | None:
        query = sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
            sql.Identifier(info.schema, info.table),
            sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in key))
        with conn.cursor() as cur:
            try:
                cur.execute(query, [v.decode() for v in key.values()])
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:  # renamed or dropped since: the move goes as it came
                log.warning("cannot read the values an update left unchanged", extra={
                    "table": f"{info.schema}.{info.table}", "error": str(exc).strip()})
                return None
            result = cur.pgresult
            if result is None or result.ntuples != 1:
                return None
            return {c: result.get_value(0, i) for i, c in enumerate(columns)}
    return lookup
