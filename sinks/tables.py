"""Cloud tables: where a site table lands, creating it when missing and checking it can hold the rows.

A site table ``schema.name`` lands in the cloud table of the same name unless ``[sink.tables]``
maps it elsewhere; every site shares that table. A missing table is created with the site's
column types, the site column first and primary key ``(site column, source key...)``. A column
the cloud lacks is added; a column the site widened (every cloud value fits the new type) is
altered to the new type. An existing column whose type cannot hold the site's values, or a
table without a unique key on ``(site column, source key...)``, stops the site with an error
naming table and column. A site table without a key (REPLICA IDENTITY FULL, no primary key) is a
multiset, and its cloud table has no unique key at all.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

import psycopg
from cachetools import LRUCache
from psycopg import sql

from cdc.core import ledger
from cdc.core.errors import ApplyError
from cdc.runtime.pgsession import pinned_conninfo
from cdc.core.types.catalog import TypeDef
from cdc.core.types.mapping import can_hold
from sinks import sql as q
from sinks.cloud_names import check_names
from sinks.changes import ColumnDef, TableVersion

log = logging.getLogger(__name__)

#: prepared cloud targets kept, by (site, table version): versions only accumulate, times every
#: site; one evicted is prepared again, as after a rollback (:meth:`CloudTables.forget`)
TARGETS_KEPT = 1024

def _type_exists(conn: psycopg.Connection, sql_type: str) -> bool:
    row = conn.execute("SELECT to_regtype(%s) IS NOT NULL", (sql_type,)).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True, slots=True)
class Target:
    """A cloud table ready to receive one table version's rows."""

    schema: str
    table: str
    ident: sql.Identifier
    columns: tuple[ColumnDef, ...]  # the version's columns, cloud-side names
    time_column: str | None = None  # a site hypertable's time column (cloud name), in the key

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def key_columns(self) -> list[ColumnDef]:
        return [c for c in self.columns if c.is_key]

    def columns_of(self, fields: tuple[str, ...]) -> list[ColumnDef]:
        """The columns of these Avro fields (what a partial update sets), in that order."""
        by_field = {c.field: c for c in self.columns}
        return [by_field[f] for f in fields]


class CloudTables:
    """Resolves and prepares cloud tables, once per table version per cloud transaction."""

    def __init__(self, site_column: str, mapping: dict[str, str], create: bool = True,
                 dsn: str | None = None) -> None:
        self.dsn = dsn  # for enum labels, which must be committed before a row may use them
        self.site_column = site_column
        self.mapping = mapping
        self.create = create
        self._ready: LRUCache[tuple[str, int], Target] = LRUCache(TARGETS_KEPT)
        self._timescaledb: bool | None = None  # whether the cloud has the extension

    def forget(self) -> None:
        """After a rollback: DDL done in that transaction is gone too."""
        self._ready.clear()

    def name_of(self, version: TableVersion) -> tuple[str, str]:
        mapped = self.mapping.get(version.qualified)
        if mapped:
            schema, _, table = mapped.partition(".")
            return schema, table
        return version.schema, version.table

    def target(self, conn: psycopg.Connection, version: TableVersion, site_id: str) -> Target:
        key = (site_id, version.fingerprint)
        target = self._ready.get(key)
        if target is None:
            target = self._prepare(conn, version, site_id)
            self._ready[key] = target
        return target

    def _columns(self, conn: psycopg.Connection, schema: str, table: str) -> dict[str, str] | None:
        rows = conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
            (schema, table)).fetchall()
        return {r[0]: r[1] for r in rows} if rows else None

    def _has_unique_key(self, conn: psycopg.Connection, schema: str, table: str,
                        names: list[str]) -> bool:
        rows = conn.execute(
            "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)"
            " WHERE n.nspname = %s AND c.relname = %s AND i.indisunique AND i.indpred IS NULL"
            " GROUP BY i.indexrelid", (schema, table)).fetchall()
        want = sorted(names)
        return any(r[0] == want for r in rows)

    def _drop_row_unique(self, conn: psycopg.Connection, schema: str, table: str,
                         names: list[str]) -> None:
        """A keyless site table is a multiset: a unique constraint over the whole row (what
        earlier versions created for it) would merge equal rows, so it goes."""
        rows = conn.execute(
            "SELECT k.conname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND"
            " c.relname = %s AND k.contype = 'u' AND (SELECT array_agg(a.attname::text ORDER BY"
            " a.attname) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = ANY(k.conkey))"
            " = %s::text[]", (schema, table, sorted(names))).fetchall()
        for (name,) in rows:
            conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                q.qualified(schema, table), sql.Identifier(name)))
            log.warning("dropped a unique constraint over every column of a table without a key:"
                        " it merged equal rows", extra={"table": f"{schema}.{table}",
                                                        "constraint": name})

    def _ensure_types(self, conn: psycopg.Connection, col: ColumnDef, where: str) -> None:
        """Create the enums, composites and ranges a column needs; add enum labels the site
        added; name the extension the cloud lacks for an extension's type."""
        for d in col.defs:
            if not _type_exists(conn, d.sql_name):
                if not self.create:
                    raise ApplyError(f"{where}: column {col.name} needs type {d.sql_name}, which "
                                     "the cloud lacks, and sink.create_tables is false")
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(d.schema)))
                conn.execute(q.create_type(d))
                log.info("created cloud type", extra={"type": d.sql_name, "variant": d.variant})
            elif d.variant == "enum":
                rows = conn.execute("SELECT enumlabel FROM pg_enum WHERE enumtypid ="
                                    " to_regtype(%s) ORDER BY enumsortorder",
                                    (d.sql_name,)).fetchall()
                present = {r[0] for r in rows}
                missing = [label for label in d.labels if label not in present]
                if missing:
                    self._add_labels(d, missing, present, where)
        if not col.defs and col.extension:
            if not _type_exists(conn, col.sql_type):
                raise ApplyError(
                    f"{where}: column {col.name} has type {col.sql_type} from the site's "
                    f"extension {col.extension}, which the cloud database lacks: run CREATE "
                    f"EXTENSION {col.extension} in the cloud database")

    def _add_labels(self, d: TypeDef, missing: list[str], present: set[str], where: str) -> None:
        """New enum labels, committed on their own connection: PostgreSQL refuses a label in
        the transaction that added it."""
        if self.dsn is None:
            raise ApplyError(f"{where}: enum {d.sql_name} lacks labels {missing} in the cloud")
        with psycopg.connect(pinned_conninfo(self.dsn), autocommit=True) as other:
            for label in missing:
                other.execute(q.add_enum_label(d, label, present))
                present.add(label)
        log.info("added enum labels", extra={"type": d.sql_name, "labels": missing})

    def _cloud_has_timescaledb(self, conn: psycopg.Connection) -> bool:
        if self._timescaledb is None:
            self._timescaledb = conn.execute(
                "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is not None
        return self._timescaledb

    def _make_hypertable(self, conn: psycopg.Connection, schema: str, table: str,
                         version: TableVersion, mapping: dict[str, str]) -> None:
        """The site table is a hypertable: so is the new cloud table, on the same time column
        with the same chunk interval (compression and retention stay the operator's)."""
        spec = version.hypertable or {}
        site_column = spec.get("time_column")
        column = next((c for c in version.columns if c.name == site_column), None)
        if column is None:
            log.warning("hypertable time column not among the columns; plain table kept",
                        extra={"table": f"{schema}.{table}", "column": site_column})
            return
        interval = spec.get("chunk_interval")
        if interval is None:
            partition: sql.Composable = sql.SQL("")
        elif column.sql_type.startswith(("timestamp", "date")):
            partition = sql.SQL(", {}::interval").format(sql.Literal(f"{int(interval)} microseconds"))
        else:  # an integer time column: the interval in its own type
            partition = sql.SQL(", {}::{}").format(sql.Literal(int(interval)),
                                                  q.type_sql(column.sql_type, column.name))
        conn.execute(sql.SQL("SELECT create_hypertable({}::regclass, by_range({}{}))").format(
            sql.Literal(f"{q.qualified(schema, table).as_string(conn)}"),
            sql.Literal(mapping[column.name]), partition))
        log.info("created cloud hypertable", extra={
            "table": f"{schema}.{table}", "time_column": mapping[column.name],
            "chunk_interval": interval})

    def _follow_incarnation(self, conn: psycopg.Connection, site_id: str, version: TableVersion,
                            schema: str, table: str, table_exists: bool) -> None:
        """A site table with a new OID was dropped and created again: the site's rows of the
        old one are gone at the site, so they go from the cloud too, with what was known of
        its columns."""
        if version.relid is None:
            return
        row = ledger.site_table(conn, site_id, schema, table)
        if row is not None and row[1] is not None and row[1] != version.qualified:
            # each switch between them would look like a table dropped and created again
            raise ApplyError(f"site {site_id}: site tables {row[1]} and {version.qualified} both "
                             f"land in cloud table {schema}.{table}; map one of them to a cloud "
                             "table of its own in [sink.tables]")
        if row is not None and row[0] != version.relid and table_exists:
            cur = conn.execute(q.delete_site_rows(q.qualified(schema, table), self.site_column),
                               (site_id,))
            ledger.forget_site_columns(conn, site_id, schema, table)
            log.warning("site table dropped and created again: the site's old rows removed",
                        extra={"site": site_id, "table": f"{schema}.{table}",
                               "site_table": version.qualified, "rows": cur.rowcount})
        if row is None or row[0] != version.relid or row[1] is None:
            ledger.save_site_table(conn, site_id, schema, table, version.relid, version.qualified)

    def _follow_site(self, conn: psycopg.Connection, site_id: str, version: TableVersion,
                     schema: str, table: str, existing: dict[str, str] | None,
                     where: str) -> tuple[dict[str, str], list[ColumnDef]]:
        """Map this site's columns to cloud columns, renaming a cloud column the site renamed
        (same attnum, new name). Returns the mapping and the columns whose rows of this site
        must be set to the site's value for older rows: added with a DEFAULT (``missing``), or
        dropped and added again under the same name."""
        known = ledger.site_columns(conn, site_id, schema, table)
        names = {c.name for c in version.columns}
        by_attnum = {attnum: (name, cloud) for name, (attnum, cloud) in known.items()
                     if attnum is not None and name not in names}
        mapping: dict[str, str] = {}
        refill: list[ColumnDef] = []
        for col in version.columns:
            if col.name in known:
                attnum, cloud = known[col.name]
                mapping[col.name] = cloud
                if attnum is not None and col.attnum is not None and attnum != col.attnum:
                    refill.append(col)  # dropped and added again: older rows hold the default
                continue
            renamed = by_attnum.get(col.attnum) if col.attnum is not None else None
            if renamed is None:
                mapping[col.name] = col.name
                if known and col.missing is not None:
                    refill.append(col)  # added with a default: older rows hold it at the site
                continue
            old_name, cloud = renamed
            if cloud != col.name and existing is not None and cloud in existing:
                if col.name in existing:
                    raise ApplyError(f"{where}: the site renamed column {old_name} to "
                                     f"{col.name}, but the cloud has both {cloud} and {col.name}")
                conn.execute(sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}").format(
                    q.qualified(schema, table), sql.Identifier(cloud), sql.Identifier(col.name)))
                # every site whose column lands in the old cloud column follows it
                ledger.rename_cloud_column(conn, schema, table, cloud, col.name)
                existing[col.name] = existing.pop(cloud)
                # other sites' prepared targets name the old cloud column: prepare them again
                for k in [k for k, t in self._ready.items()
                          if (t.schema, t.table) == (schema, table)]:
                    del self._ready[k]
                log.info("renamed cloud column", extra={
                    "table": f"{schema}.{table}", "from": cloud, "to": col.name, "site": site_id})
                cloud = col.name
            ledger.forget_site_column(conn, site_id, schema, table, old_name)
            mapping[col.name] = cloud
        ledger.save_site_columns(conn, site_id, schema, table, [
            (col.name, col.attnum, mapping[col.name]) for col in version.columns])
        return mapping, refill

    def _prepare(self, conn: psycopg.Connection, version: TableVersion, site_id: str) -> Target:
        schema, table = self.name_of(version)
        check_names(version, schema, self.site_column, site_id)
        where = f"cloud table {schema}.{table} (site table {version.qualified})"
        conn.execute(ledger.DDL_LOCK)
        for col in version.columns:
            self._ensure_types(conn, col, where)
        existing = self._columns(conn, schema, table)
        self._follow_incarnation(conn, site_id, version, schema, table, existing is not None)
        mapping, refill = self._follow_site(conn, site_id, version, schema, table, existing, where)
        columns = tuple(replace(c, name=mapping[c.name]) for c in version.columns)
        if existing is None:
            if not self.create:
                raise ApplyError(f"{where} does not exist and sink.create_tables is false")
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            conn.execute(q.create_table(schema, table, self.site_column, columns,
                                        version.keyless))
            log.info("created cloud table", extra={"table": f"{schema}.{table}",
                                                    "from": version.qualified})
            if version.hypertable and self._cloud_has_timescaledb(conn):
                self._make_hypertable(conn, schema, table, version, mapping)
        else:
            if self.site_column not in existing:
                raise ApplyError(f"{where} has no site column {self.site_column!r} "
                                 "(sink.site_column); it cannot keep sites apart")
            for col in columns:
                cloud_type = existing.get(col.name)
                if cloud_type is None:
                    conn.execute(q.add_column(schema, table, col))
                    log.info("added cloud column", extra={"table": f"{schema}.{table}",
                                                          "column": col.name, "type": col.sql_type})
                elif can_hold(cloud_type, col.sql_type):
                    pass
                elif can_hold(col.sql_type, cloud_type):
                    # the site widened the column (int4 -> int8, varchar(n) -> text, ...):
                    # every cloud value fits the new type, so the cloud follows
                    conn.execute(q.alter_column_type(schema, table, col))
                    log.info("widened cloud column", extra={
                        "table": f"{schema}.{table}", "column": col.name, "from": cloud_type,
                        "to": col.sql_type})
                else:
                    raise ApplyError(f"{where}: column {col.name} is {cloud_type}, which cannot "
                                     f"hold the site's {col.sql_type}, and the site's type cannot "
                                     "hold the cloud's values either")
            key = [self.site_column] + [c.name for c in columns if c.is_key]
            if version.keyless:
                self._drop_row_unique(conn, schema, table, key)
            elif not self._has_unique_key(conn, schema, table, key):
                raise ApplyError(f"{where} has no primary key or unique index on "
                                 f"({', '.join(key)}): rows of different sites could not be told apart")
        for col in refill:
            # rows the site had before the column: it reads them with the column's default
            conn.execute(sql.SQL("UPDATE {} SET {} = %s WHERE {} = %s").format(
                q.qualified(schema, table), sql.Identifier(mapping[col.name]),
                sql.Identifier(self.site_column)), (col.missing, site_id))
            log.info("set older rows of an added column", extra={
                "table": f"{schema}.{table}", "column": mapping[col.name], "site": site_id,
                "value": col.missing})
        time_column = (version.hypertable or {}).get("time_column")
        keyed = {c.name for c in version.columns if c.is_key}
        return Target(schema, table, q.qualified(schema, table), columns,
                      mapping.get(time_column) if time_column in keyed else None)
