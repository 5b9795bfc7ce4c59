"""The site catalog facts the source reads beside the stream: types, keys, columns, dropped
relations, and TimescaleDB's hypertables and chunks; and the same facts for ``cdc check``,
``cdc status`` and ``cdc verify``, so each is read by one query.

The stream is the truth of what a table looked like; the catalog describes the present. These
readers fill in what pgoutput does not send (a type's name, a table's primary key under
REPLICA IDENTITY FULL, a column's attnum), each by relation OID.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from cdc.core.errors import ReplicationError
from cdc.core.lsn import parse_lsn
from cdc.source.timescale import (INTERNAL_SCHEMAS, ChunkRange, Hypertable,
                           chunk_hypertable_id)
from cdc.core.types.catalog import TypeRow, describe
from cdc.core.types.mapping import ColumnType, TypeLookup

log = logging.getLogger(__name__)

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1  # an unbounded side of a dimension slice
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


_INDEX_FLAG = {"primary": sql.SQL("i.indisprimary"), "replica": sql.SQL("i.indisreplident")}


def key_columns(conn: psycopg.Connection, relid: int, index: str = "primary") -> list[str]:
    """The columns of a table's primary key (``index="primary"``) or replica identity index
    (``"replica"``), in index order; none when it has no such index."""
    return [r[0] for r in conn.execute(sql.SQL(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
        " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::oid AND {}"
        " ORDER BY array_position(i.indkey::int2[], a.attnum)").format(_INDEX_FLAG[index]),
        (relid,)).fetchall()]


def primary_key_lookup(conn: psycopg.Connection):  # -> cdc.source.relations.KeyLookup
    """Primary key column names by relation OID, for REPLICA IDENTITY FULL tables."""
    def lookup(oid: int) -> tuple[str, ...] | None:
        return tuple(key_columns(conn, oid)) or None
    return lookup


def compressed_batch_delete_on(conn: psycopg.Connection) -> bool:
    """Whether TimescaleDB deletes whole compressed batches, which logical decoding does not
    see (``timescaledb.enable_compressed_direct_batch_delete``)."""
    row = conn.execute("SELECT current_setting("
                       "'timescaledb.enable_compressed_direct_batch_delete', true)").fetchone()
    return bool(row) and row[0] == "on"


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
