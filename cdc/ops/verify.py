"""``cdc verify``: proof that the cloud holds exactly a site's rows, table by table.

For each selected site table, both sides are read in key order as ranges of at most
``chunk_rows`` keys (boundaries come from the site's keys, read as keys only): each range's row
count and the sum of 64-bit hashes of its rows' text (every column cast to the site's type, so a
widened cloud column compares by value) are compared. A range that differs is split until it is
small, and then its rows' keys and hashes are compared one by one, so memory stays bounded by the
chunk size whatever the table's size.

While both sides are live the cloud trails the site by what the sink has not applied yet. So the
differing keys found are checked again, up to ``settle_s`` seconds, after the cloud has applied
the site's WAL position of that moment (``tributary.sites``): only keys that still differ then
are reported.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import psycopg
from psycopg import sql

from cdc.core import ledger
from cdc.core.lsn import parse_lsn
from cdc.source.catalog import key_columns

log = logging.getLogger(__name__)

_SPLIT = 16  # sub-ranges per differing range
_SMALL = 256  # a range this small is compared row by row


@dataclass(frozen=True, slots=True)
class TableShape:
    """What the comparison needs of one site table and where it lands in the cloud."""

    site_schema: str
    site_table: str
    cloud_schema: str
    cloud_table: str
    keys: tuple[str, ...]  # site key columns, in order
    columns: tuple[str, ...]  # site columns compared
    cloud_names: dict[str, str]  # site column -> cloud column
    types: dict[str, str]  # site column -> its site type, to cast both sides to

    @property
    def qualified(self) -> str:
        return f"{self.site_schema}.{self.site_table}"


@dataclass(slots=True)
class TableResult:
    table: str
    site_rows: int = 0
    cloud_rows: int = 0
    missing: list[tuple] = field(default_factory=list)  # at the site, not in the cloud
    extra: list[tuple] = field(default_factory=list)  # in the cloud, not at the site
    different: list[tuple] = field(default_factory=list)  # in both, other values
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not (self.missing or self.extra or self.different)


class Side:
    """One database's view of a table: key-ordered ranges, counts, hashes, rows."""

    def __init__(self, conn: psycopg.Connection, shape: TableShape, cloud: bool,
                 site_column: str = "site_id", site_id: str = "") -> None:
        self.conn = conn
        self.shape = shape
        names = shape.cloud_names if cloud else {c: c for c in shape.columns}
        schema, table = ((shape.cloud_schema, shape.cloud_table) if cloud
                         else (shape.site_schema, shape.site_table))
        self.table = sql.Identifier(schema, table)

        def cast(col: str) -> sql.Composable:
            return sql.SQL("{}::{}").format(sql.Identifier(names[col]), sql.SQL(shape.types[col]))

        def tuple_of(parts: list[sql.Composable]) -> sql.Composable:
            joined = sql.SQL(", ").join(parts)
            return sql.SQL("({})").format(joined) if len(parts) > 1 else joined

        self.key_list = sql.SQL(", ").join(cast(k) for k in shape.keys)
        self.key_expr = tuple_of([cast(k) for k in shape.keys])
        self.key_param = tuple_of([sql.SQL("%s::{}").format(sql.SQL(shape.types[k]))
                                   for k in shape.keys])
        self.row_hash = sql.SQL("hashtextextended(ROW({})::text, 0)").format(
            sql.SQL(", ").join(cast(c) for c in shape.columns))
        self.where = (sql.SQL("{} = {}").format(sql.Identifier(site_column), sql.Literal(site_id))
                      if cloud else sql.SQL("true"))

    def _range(self, lo: tuple | None, hi: tuple | None) -> tuple[sql.Composable, list[Any]]:
        cond: list[sql.Composable] = [self.where]
        params: list[Any] = []
        if lo is not None:
            cond.append(sql.SQL("{} >= {}").format(self.key_expr, self.key_param))
            params += list(lo)
        if hi is not None:
            cond.append(sql.SQL("{} < {}").format(self.key_expr, self.key_param))
            params += list(hi)
        return sql.SQL(" AND ").join(cond), params

    def summary(self, lo: tuple | None, hi: tuple | None) -> tuple[int, int]:
        """(rows, sum of row hashes) in [lo, hi)."""
        cond, params = self._range(lo, hi)
        row = self.conn.execute(sql.SQL("SELECT count(*), coalesce(sum({}), 0) FROM {} WHERE {}")
                                .format(self.row_hash, self.table, cond), params).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def boundaries(self, every: int, lo: tuple | None = None,
                   hi: tuple | None = None) -> Iterator[tuple]:
        """Keys that cut [lo, hi) into runs of ``every`` keys, in order: keyset pages read
        through the key index, keys only."""
        start = lo
        while True:
            cond, params = self._range(start, hi)
            row = self.conn.execute(sql.SQL(
                "SELECT {} FROM {} WHERE {} ORDER BY {} OFFSET {} LIMIT 1").format(
                self.key_list, self.table, cond, self.key_list, sql.Literal(every)),
                params).fetchone()
            if row is None:
                return
            start = tuple(row)
            yield start

    def rows(self, lo: tuple | None, hi: tuple | None) -> dict[tuple, int]:
        """key -> row hash in [lo, hi) (a small range)."""
        cond, params = self._range(lo, hi)
        out: dict[tuple, int] = {}
        for row in self.conn.execute(sql.SQL("SELECT {}, {} FROM {} WHERE {}").format(
                self.key_list, self.row_hash, self.table, cond), params):
            out[tuple(row[:-1])] = int(row[-1])
        return out

    def key_rows(self, keys: list[tuple]) -> dict[tuple, int]:
        """key -> row hash, for those of ``keys`` that exist."""
        out: dict[tuple, int] = {}
        query = sql.SQL("SELECT {} FROM {} WHERE {} AND {} = {}").format(
            self.row_hash, self.table, self.where, self.key_expr, self.key_param)
        for key in keys:
            row = self.conn.execute(query, list(key)).fetchone()
            if row is not None:
                out[key] = int(row[0])
        return out


def compare_range(site: Side, cloud: Side, lo: tuple | None, hi: tuple | None,
                  result: TableResult, limit: int) -> None:
    """Narrow a differing [lo, hi) down to keys (at most ``limit`` reported per kind)."""
    if len(result.missing) + len(result.extra) + len(result.different) >= limit:
        return  # enough to show; the counts already say the table differs
    s_count, s_hash = site.summary(lo, hi)
    c_count, c_hash = cloud.summary(lo, hi)
    if (s_count, s_hash) == (c_count, c_hash):
        return
    if max(s_count, c_count) <= _SMALL:
        s_rows, c_rows = site.rows(lo, hi), cloud.rows(lo, hi)
        for key, h in s_rows.items():
            if key not in c_rows:
                result.missing.append(key)
            elif c_rows[key] != h:
                result.different.append(key)
        result.extra += [key for key in c_rows if key not in s_rows]
        return
    # split by the keys of the side that has more rows here
    source = site if s_count >= c_count else cloud
    step = max(1, max(s_count, c_count) // _SPLIT)
    cuts = [lo, *source.boundaries(step, lo, hi), hi]
    for a, b in zip(cuts, cuts[1:]):
        compare_range(site, cloud, a, b, result, limit)


def verify_table(site: Side, cloud: Side, chunk_rows: int, result: TableResult,
                 limit: int = 1000, progress: Callable[[str], None] = lambda m: None) -> None:
    """Compare one table range by range (ranges of ``chunk_rows`` site keys)."""
    result.site_rows = site.summary(None, None)[0]
    result.cloud_rows = cloud.summary(None, None)[0]
    cuts: list[tuple | None] = [None, *site.boundaries(chunk_rows), None]
    for i, (lo, hi) in enumerate(zip(cuts, cuts[1:]), 1):
        compare_range(site, cloud, lo, hi, result, limit)
        if i % 50 == 0:
            progress(f"{result.table}: {i}/{len(cuts) - 1} ranges compared")


def settle(site: Side, cloud: Side, result: TableResult, wait_applied: Callable[[], bool],
           settle_s: float) -> None:
    """Check differing keys again once the cloud has applied what the site had: live changes
    in flight disappear, real differences stay."""
    deadline = time.monotonic() + settle_s
    while not result.ok and time.monotonic() < deadline:
        if not wait_applied():
            time.sleep(0.5)
            continue
        keys = result.missing + result.extra + result.different
        s_rows, c_rows = site.key_rows(keys), cloud.key_rows(keys)
        result.missing = [k for k in keys if k in s_rows and k not in c_rows]
        result.extra = [k for k in keys if k in c_rows and k not in s_rows]
        result.different = [k for k in keys if k in s_rows and k in c_rows
                            and s_rows[k] != c_rows[k]]
        if not result.ok:
            time.sleep(1.0)


def applied_past(cloud: psycopg.Connection, site_id: str, lsn: int) -> bool:
    """Whether the cloud has applied the site's transactions up to ``lsn``."""
    end = ledger.applied_end_lsn(cloud, site_id)
    return end is not None and end >= lsn


_COLUMNS_SQL = """
SELECT a.attname, CASE WHEN t.typnamespace = 'pg_catalog'::regnamespace
                       THEN format_type(a.atttypid, a.atttypmod) ELSE 'text' END
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""


def table_shape(site: psycopg.Connection, cloud: psycopg.Connection, site_id: str,
                schema: str, table: str, mapping: dict[str, str]) -> TableShape:
    """Keys, columns and types from the site catalog; cloud names from the sink's records."""
    regclass = sql.Identifier(schema, table).as_string(site)
    columns = site.execute(_COLUMNS_SQL, (regclass,)).fetchall()
    types = {name: sql_type for name, sql_type in columns}
    relid = site.execute("SELECT %s::regclass::oid", (regclass,)).fetchone()[0]  # type: ignore[index]
    keys: list[str] = []
    for index in ("primary", "replica"):  # else the whole row (FULL)
        keys = keys or key_columns(site, relid, index)
    keys = keys or list(types)
    cloud_schema, _, cloud_table = mapping.get(f"{schema}.{table}", f"{schema}.{table}").partition(".")
    names = {c: c for c in types}
    try:
        for site_name, (_, cloud_name) in ledger.site_columns(
                cloud, site_id, cloud_schema, cloud_table).items():
            if site_name in names:
                names[site_name] = cloud_name
    except psycopg.errors.UndefinedTable:
        cloud.rollback()
    return TableShape(schema, table, cloud_schema, cloud_table, tuple(keys), tuple(types),
                      names, types)


def verify(site: psycopg.Connection, cloud: psycopg.Connection, site_id: str,
           tables: list[tuple[str, str]], mapping: dict[str, str], site_column: str,
           chunk_rows: int = 10_000, settle_s: float = 30.0,
           progress: Callable[[str], None] = lambda m: None) -> list[TableResult]:
    """Compare each site table with its cloud table (both connections autocommit)."""
    results = []
    for schema, table in tables:
        result = TableResult(f"{schema}.{table}")
        results.append(result)
        try:
            shape = table_shape(site, cloud, site_id, schema, table, mapping)
            cloud_cols = {r[0] for r in cloud.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
                " AND attnum > 0 AND NOT attisdropped",
                (sql.Identifier(shape.cloud_schema, shape.cloud_table).as_string(cloud),))}
            if not cloud_cols:
                result.error = f"cloud table {shape.cloud_schema}.{shape.cloud_table} is missing"
                result.site_rows = Side(site, shape, cloud=False).summary(None, None)[0]
                continue
            lacking = [c for c in shape.columns if shape.cloud_names[c] not in cloud_cols]
            if lacking:
                result.error = f"cloud table lacks column(s) {', '.join(lacking)}"
                continue
            site_side = Side(site, shape, cloud=False)
            cloud_side = Side(cloud, shape, cloud=True, site_column=site_column, site_id=site_id)
            progress(f"{result.table}: comparing")
            verify_table(site_side, cloud_side, chunk_rows, result, progress=progress)
            if not result.ok:
                progress(f"{result.table}: {len(result.missing) + len(result.extra) + len(result.different)}"
                         " key(s) differ; checking them again once the cloud has caught up")

                def caught_up() -> bool:
                    row = site.execute("SELECT pg_current_wal_lsn()::text").fetchone()
                    return applied_past(cloud, site_id, parse_lsn(row[0]))  # type: ignore[index]
                settle(site_side, cloud_side, result, caught_up, settle_s)
                result.cloud_rows = cloud_side.summary(None, None)[0]
                result.site_rows = site_side.summary(None, None)[0]
        except psycopg.Error as exc:
            result.error = str(exc).strip().splitlines()[0]
    return results


def _key_text(key: tuple) -> str:
    parts = [repr(v) if isinstance(v, str) else str(v) for v in key]
    return parts[0] if len(parts) == 1 else "(" + ", ".join(parts) + ")"


def report(results: list[TableResult], examples: int = 3) -> list[str]:
    """The table ``cdc verify`` prints."""
    width = max([len(r.table) for r in results] + [5])
    lines = [f"{'table':<{width}}  {'site rows':>10}  {'cloud rows':>10}  {'missing':>7}  "
             f"{'extra':>7}  {'differ':>7}  status"]
    for r in results:
        status = "ok" if r.ok else ("ERROR: " + r.error if r.error else "DIFFERS")
        lines.append(f"{r.table:<{width}}  {r.site_rows:>10}  {r.cloud_rows:>10}  "
                     f"{len(r.missing):>7}  {len(r.extra):>7}  {len(r.different):>7}  {status}")
        for label, keys in (("missing in the cloud", r.missing), ("extra in the cloud", r.extra),
                            ("different values", r.different)):
            if keys:
                shown = ", ".join(_key_text(k) for k in keys[:examples])
                more = f" and {len(keys) - examples} more" if len(keys) > examples else ""
                lines.append(f"    {label}: {shown}{more}")
    return lines
