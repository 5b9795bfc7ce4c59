"""Pure SQL builders for the cloud side: every identifier through ``psycopg.sql``.

Nothing here runs a statement; :mod:`sinks.applier` and :mod:`sinks.tables` execute what
these return. The sink's own bookkeeping statements live in :mod:`cdc.core.ledger`.
"""

from __future__ import annotations

import re
from typing import Any

from psycopg import sql

from cdc.core.errors import SchemaError
from cdc.core.types.catalog import TypeDef
from sinks.changes import ColumnDef

_IDENT = r'(?:[a-z_][a-z0-9_$]*|"(?:[^"]|"")+")'
_TYPE_RE = re.compile(
    r"(?:interval(?: (?:year|month|day|hour|minute|second)(?: to (?:month|hour|minute|second))?)"
    rf"|(?:{_IDENT}\.)?{_IDENT}(?: precision| varying)?)"  # name, maybe schema-qualified
    r"(?:\(\w+(?:, ?-?\w+)*\))?"  # modifiers: numbers, or words (geometry(Point,4326))
    r"(?: with(?:out)? time zone)?"
    r"(?:\[\])*\Z")


def type_sql(sql_type: str, where: str = "") -> sql.SQL:
    """A column type from an event schema as SQL, after checking it is only a type name.

    Type names come from the site's ``format_type``; they are checked against the shape of a
    type name (identifiers, modifiers, ``[]``) so nothing else can ride along into a statement.
    """
    if not _TYPE_RE.match(sql_type):
        raise SchemaError(f"{where}: {sql_type!r} is not a PostgreSQL type name")
    return sql.SQL(sql_type)


def create_type(d: TypeDef) -> sql.Composed:
    """CREATE TYPE for an enum, composite or range type a site column uses."""
    name = sql.Identifier(d.schema, d.name)
    where = f"type {d.schema}.{d.name}"
    if d.variant == "enum":
        return sql.SQL("CREATE TYPE {} AS ENUM ({})").format(
            name, sql.SQL(", ").join(map(sql.Literal, d.labels)))
    if d.variant == "composite":
        return sql.SQL("CREATE TYPE {} AS ({})").format(name, sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(a), type_sql(t, f"{where}.{a}"))
            for a, t in d.attributes))
    if d.variant == "range":
        return sql.SQL("CREATE TYPE {} AS RANGE (subtype = {})").format(
            name, type_sql(d.subtype, where))
    raise SchemaError(f"{where}: unknown kind of user-defined type {d.variant!r}")


def add_enum_label(d: TypeDef, label: str, present: set[str]) -> sql.Composed:
    """ALTER TYPE ... ADD VALUE, placed where the site has it: after the nearest earlier label
    the cloud has, else before the nearest later one."""
    index = d.labels.index(label)
    before = [x for x in d.labels[:index] if x in present]
    after = [x for x in d.labels[index + 1:] if x in present]
    if before:
        place = sql.SQL(" AFTER {}").format(sql.Literal(before[-1]))
    elif after:
        place = sql.SQL(" BEFORE {}").format(sql.Literal(after[0]))
    else:
        place = sql.SQL("")
    return sql.SQL("ALTER TYPE {} ADD VALUE IF NOT EXISTS {}{}").format(
        sql.Identifier(d.schema, d.name), sql.Literal(label), place)


def qualified(schema: str, table: str) -> sql.Identifier:
    return sql.Identifier(schema, table)


def create_table(schema: str, table: str, site_column: str,
                 columns: tuple[ColumnDef, ...], keyless: bool = False) -> sql.Composed:
    """CREATE TABLE with the site column first and primary key (site, source key...). A site
    table without a key (REPLICA IDENTITY FULL, no primary key) is a multiset: its cloud table
    has no unique constraint, which would merge equal rows."""
    defs = [sql.SQL("{} text NOT NULL").format(sql.Identifier(site_column))]
    for col in columns:
        defs.append(sql.SQL("{} {}").format(
            sql.Identifier(col.name), type_sql(col.sql_type, f"{schema}.{table}.{col.name}")))
    if not keyless:
        key = [sql.Identifier(site_column)] + [sql.Identifier(c.name) for c in columns if c.is_key]
        defs.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(key)))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
        qualified(schema, table), sql.SQL(", ").join(defs))


def add_column(schema: str, table: str, col: ColumnDef) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
        qualified(schema, table), sql.Identifier(col.name),
        type_sql(col.sql_type, f"{schema}.{table}.{col.name}"))


def alter_column_type(schema: str, table: str, col: ColumnDef) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(
        qualified(schema, table), sql.Identifier(col.name),
        type_sql(col.sql_type, f"{schema}.{table}.{col.name}"))


def create_stage(stage: str, target: sql.Identifier, site_column: str,
                 columns: list[ColumnDef]) -> sql.Composed:
    """A session temp table with the target's column types (``LIKE`` would copy all columns)."""
    cols = [sql.SQL("{} text").format(sql.Identifier(site_column))]
    cols += [sql.SQL("{} {}").format(sql.Identifier(c.name), type_sql(c.sql_type, c.name))
             for c in columns]
    return sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
        sql.Identifier(stage), sql.SQL(", ").join(cols))


def copy_stage(stage: str, site_column: str, columns: list[ColumnDef]) -> sql.Composed:
    names = [sql.Identifier(site_column)] + [sql.Identifier(c.name) for c in columns]
    return sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(stage),
                                                     sql.SQL(", ").join(names))


def truncate_stage(stage: str) -> sql.Composed:
    return sql.SQL("TRUNCATE {}").format(sql.Identifier(stage))


def upsert_from_stage(target: sql.Identifier, stage: str, site_column: str,
                      columns: list[ColumnDef], key: list[ColumnDef],
                      append_only: bool = False) -> sql.Composed:
    """INSERT ... SELECT FROM stage ON CONFLICT (site, key) DO UPDATE (or DO NOTHING)."""
    names = [sql.Identifier(site_column)] + [sql.Identifier(c.name) for c in columns]
    conflict = [sql.Identifier(site_column)] + [sql.Identifier(c.name) for c in key]
    keyset = {c.name for c in key}
    updates = [sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c.name))
               for c in columns if c.name not in keyset]
    if append_only or not updates:
        action = sql.SQL("DO NOTHING")
    else:
        action = sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(updates))
    return sql.SQL("INSERT INTO {t} ({n}) SELECT {n} FROM {s} ON CONFLICT ({k}) {a}").format(
        t=target, n=sql.SQL(", ").join(names), s=sql.Identifier(stage),
        k=sql.SQL(", ").join(conflict), a=action)


def delete_using_stage(target: sql.Identifier, stage: str, site_column: str,
                       key: list[ColumnDef],
                       time_range: tuple[str, Any, Any] | None = None) -> sql.Composed:
    """DELETE of the staged keys. ``time_range`` (column, min, max of the staged keys) adds
    constant bounds, so TimescaleDB excludes the other chunks when it plans (a join alone makes
    it probe every chunk)."""
    cond = [sql.SQL("t.{0} = s.{0}").format(sql.Identifier(site_column))]
    cond += [sql.SQL("t.{0} = s.{0}").format(sql.Identifier(c.name)) for c in key]
    if time_range is not None:
        column, low, high = time_range
        cond.append(sql.SQL("t.{} BETWEEN {} AND {}").format(
            sql.Identifier(column), sql.Literal(low), sql.Literal(high)))
    return sql.SQL("DELETE FROM {} AS t USING {} AS s WHERE {}").format(
        target, sql.Identifier(stage), sql.SQL(" AND ").join(cond))


def delete_site_rows(target: sql.Identifier, site_column: str) -> sql.Composed:
    """A site's TRUNCATE: only that site's rows (parameter: site id)."""
    return sql.SQL("DELETE FROM {} WHERE {} = %s").format(target, sql.Identifier(site_column))


def delete_site_range(target: sql.Identifier, site_column: str, column: ColumnDef,
                      start: bool, end: bool) -> sql.Composed:
    """A site's TRUNCATE of one TimescaleDB chunk: its rows with ``column`` in [start, end)
    (parameters: site id, then the bounds present, as text of the column's type)."""
    cond = [sql.SQL("{} = %s").format(sql.Identifier(site_column))]
    cast = type_sql(column.sql_type, column.name)
    if start:
        cond.append(sql.SQL("{} >= CAST(%s AS {})").format(sql.Identifier(column.name), cast))
    if end:
        cond.append(sql.SQL("{} < CAST(%s AS {})").format(sql.Identifier(column.name), cast))
    return sql.SQL("DELETE FROM {} WHERE ").format(target) + sql.SQL(" AND ").join(cond)


def delete_moved_onto(target: sql.Identifier, site_column: str,
                      key: list[ColumnDef]) -> sql.Composed:
    """Before a partial update moves a row from one key to another: DELETE the row already at
    the new key, if the row to move is there. (Parameters: site id, new key values, site id, old
    key values.) At the site no row held the new key at that point of its history, so a cloud
    row there came from a copy read later (a resumed initial copy) and later changes bring the
    moved row up to it."""
    def match(alias: str) -> sql.Composable:
        cond = [sql.SQL("{}.{} = %s").format(sql.Identifier(alias), sql.Identifier(site_column))]
        cond += [sql.SQL("{}.{} = %s").format(sql.Identifier(alias), sql.Identifier(c.name))
                 for c in key]
        return sql.SQL(" AND ").join(cond)
    return sql.SQL("DELETE FROM {} AS n WHERE {} AND EXISTS (SELECT 1 FROM {} AS o WHERE {})"
                   ).format(target, match("n"), target, match("o"))


def update_row(target: sql.Identifier, site_column: str, set_columns: list[ColumnDef],
               key: list[ColumnDef]) -> sql.Composed:
    """UPDATE of some columns of one row; parameters: set values, site id, old key values."""
    sets = [sql.SQL("{} = %s").format(sql.Identifier(c.name)) for c in set_columns]
    cond = [sql.SQL("{} = %s").format(sql.Identifier(site_column))]
    cond += [sql.SQL("{} = %s").format(sql.Identifier(c.name)) for c in key]
    return sql.SQL("UPDATE {} SET {} WHERE {}").format(
        target, sql.SQL(", ").join(sets), sql.SQL(" AND ").join(cond))


# -- keyless tables: a multiset, one row at a time for updates and deletes ----------------------

def copy_into(target: sql.Identifier, site_column: str, columns: list[ColumnDef]) -> sql.Composed:
    """COPY straight into the target: rows of a keyless table are added, never merged."""
    names = [sql.Identifier(site_column)] + [sql.Identifier(c.name) for c in columns]
    return sql.SQL("COPY {} ({}) FROM STDIN").format(target, sql.SQL(", ").join(names))


def _one_row(target: sql.Identifier, site_column: str, columns: list[ColumnDef],
             time_column: str | None) -> sql.Composed:
    """A CTE naming ONE row of the site equal to a before-image (parameters: site id, each
    column's value, then the time column's value when given). Values compare by their output
    text, cast through the column's type: NULL matches NULL, and types without an equality
    operator (json, xml, point) compare too. ``tableoid`` with ``ctid``: a hypertable's chunks
    each have their own ctids."""
    cond = [sql.SQL("{} = %s").format(sql.Identifier(site_column))]
    by_name = {c.name: c for c in columns}
    for c in columns:
        cond.append(sql.SQL("{}::text IS NOT DISTINCT FROM (%s::{})::text").format(
            sql.Identifier(c.name), type_sql(c.sql_type, c.name)))
    if time_column is not None:  # a plain equality TimescaleDB can exclude chunks by
        cond.append(sql.SQL("{} = %s::{}").format(
            sql.Identifier(time_column), type_sql(by_name[time_column].sql_type, time_column)))
    return sql.SQL("WITH one AS MATERIALIZED (SELECT tableoid AS rel, ctid AS tid FROM {} WHERE {}"
                   " LIMIT 1) ").format(target, sql.SQL(" AND ").join(cond))


def delete_one(target: sql.Identifier, site_column: str, columns: list[ColumnDef],
               time_column: str | None = None) -> sql.Composed:
    """DELETE of exactly one row equal to a before-image (parameters: see ``_one_row``)."""
    return _one_row(target, site_column, columns, time_column) + sql.SQL(
        "DELETE FROM {} AS t USING one WHERE t.tableoid = one.rel AND t.ctid = one.tid").format(
        target)


def update_one(target: sql.Identifier, site_column: str, columns: list[ColumnDef],
               set_columns: list[ColumnDef], time_column: str | None = None) -> sql.Composed:
    """UPDATE of exactly one row equal to a before-image (parameters: ``_one_row``'s, then the
    new values of ``set_columns``)."""
    sets = [sql.SQL("{} = %s::{}").format(sql.Identifier(c.name), type_sql(c.sql_type, c.name))
            for c in set_columns]
    return _one_row(target, site_column, columns, time_column) + sql.SQL(
        "UPDATE {} AS t SET {} FROM one WHERE t.tableoid = one.rel AND t.ctid = one.tid").format(
        target, sql.SQL(", ").join(sets))
