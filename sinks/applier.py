"""Applies planned steps to the cloud database inside the caller's transaction.

Set-based: the rows of an upsert or delete step go by COPY into a session temp table with the
target's column types, then one INSERT ... ON CONFLICT or DELETE ... USING moves them. No
per-row round trips except for the rare partial update (an update that left a TOAST value
unchanged and whose full row is not in the same step).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import psycopg
from cachetools import LRUCache
from psycopg import sql

from cdc.core.errors import ApplyError
from cdc.runtime.failpoints import failpoint
from sinks import copy_text, sql as q
from sinks.batcher import Append, ChangeOne, Delete, Patch, RemoveOne, Step, Truncate, Upsert
from sinks.changes import ColumnDef
from sinks.tables import CloudTables, Target

log = logging.getLogger(__name__)

#: stage names and COPY formatters kept, by table shape: shapes only accumulate (every schema
#: change); an evicted stage is created again IF NOT EXISTS (same name: named by its shape)
SHAPES_KEPT = 256


class Applier:
    """Runs steps on one connection; the caller owns the transaction."""

    def __init__(self, conn: psycopg.Connection, tables: CloudTables,
                 append_only: frozenset[str] = frozenset()) -> None:
        self.conn = conn
        self.tables = tables
        self.site_column = tables.site_column
        self.append_only = append_only  # site tables whose inserts never rewrite a row
        self._stages: LRUCache[tuple[str, str, tuple[tuple[str, str], ...]], str] = \
            LRUCache(SHAPES_KEPT)
        self._dirty: set[str] = set()  # stages holding rows in this transaction
        self._formatters: LRUCache[tuple, copy_text.Formatter] = LRUCache(SHAPES_KEPT)

    def transaction_ended(self) -> None:
        """ON COMMIT DELETE ROWS emptied every stage (a rollback empties them too)."""
        self._dirty.clear()

    def forget(self) -> None:
        """After a rollback, temp tables created in it are gone."""
        self._stages.clear()
        self._dirty.clear()
        self.tables.forget()

    def apply(self, site_id: str, steps: list[Step]) -> None:
        for step in steps:
            try:
                target = self.tables.target(self.conn, step.version, site_id)
            except psycopg.OperationalError:
                raise
            except psycopg.Error as exc:
                raise ApplyError(f"site {site_id}: cannot prepare the cloud table of "
                                 f"{step.version.qualified}: {exc}".strip()) from exc
            try:
                kind = type(step)
                if kind is Upsert:
                    self._upsert(site_id, target, step)  # type: ignore[arg-type]
                elif kind is Delete:
                    self._delete(site_id, target, step)  # type: ignore[arg-type]
                elif kind is Patch:
                    self._patch(site_id, target, step)  # type: ignore[arg-type]
                elif kind is Truncate:
                    self._truncate(site_id, target, step)  # type: ignore[arg-type]
                elif kind is Append:
                    columns = list(target.columns)
                    self._copy_rows(q.copy_into(target.ident, self.site_column, columns),
                                    columns, site_id, step.rows)  # type: ignore[union-attr]
                elif kind is RemoveOne:
                    self._remove_one(site_id, target, step)  # type: ignore[arg-type]
                elif kind is ChangeOne:
                    self._change_one(site_id, target, step)  # type: ignore[arg-type]
            except psycopg.errors.DataError as exc:  # a value the cloud column refuses
                raise ApplyError(f"site {site_id}: cloud table {target.qualified} refused "
                                 f"a value: {exc}".strip()) from exc
            except psycopg.OperationalError:
                raise  # the connection: retried by the session, not this site's fault
            except psycopg.Error as exc:
                raise ApplyError(f"site {site_id}: cloud table {target.qualified}: "
                                 f"{exc}".strip()) from exc

    def _truncate(self, site_id: str, target: Target, step: Truncate) -> None:
        """The site's rows of the table; of a chunk, only those in its time range."""
        if step.range is None:
            self.conn.execute(q.delete_site_rows(target.ident, self.site_column), (site_id,))
            return
        field, start, end = step.range
        column = target.columns_of((field,))[0]
        self.conn.execute(q.delete_site_range(target.ident, self.site_column, column,
                                              start is not None, end is not None),
                          (site_id, *(v for v in (start, end) if v is not None)))

    def _stage(self, target: Target, columns: list[ColumnDef], role: str) -> str:
        key = (target.qualified, role, tuple((c.name, c.sql_type) for c in columns))
        name = self._stages.get(key)
        if name is None:
            # named by its shape: a temp table that outlived forget() has the same columns
            digest = hashlib.sha1(repr(key).encode()).hexdigest()[:16]
            name = f"_tributary_stage_{digest}"
            self.conn.execute(q.create_stage(name, target.ident, self.site_column, columns))
            self._stages[key] = name
            if name not in self._dirty:  # a dirty one is emptied and analyzed just below
                self._analyze_empty(name)
        if name in self._dirty:  # rows of an earlier step (the stage may have been evicted)
            self.conn.execute(q.truncate_stage(name))
            self._analyze_empty(name)  # TRUNCATE made it "never analyzed" again
        self._dirty.add(name)
        return name

    def _analyze_empty(self, stage: str) -> None:
        """ANALYZE the empty stage (cheap): a table never analyzed is assumed to hold ten pages
        of rows, whatever it holds, so a stage of a few keys made DELETE ... USING hash the
        whole cloud table. Analyzed, its size is read from its pages: a few keys go through
        the key index, many are hashed. ON COMMIT DELETE ROWS keeps the figures; TRUNCATE
        resets them."""
        self.conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(stage)))

    def _copy(self, stage: str, columns: list[ColumnDef], site_id: str,
              rows: Any) -> None:
        self._copy_rows(q.copy_stage(stage, self.site_column, columns), columns, site_id, rows)

    def _copy_rows(self, statement: sql.Composed, columns: list[ColumnDef], site_id: str,
                   rows: Any) -> None:
        shape = tuple((c.field, c.kind) for c in columns)
        fmt = self._formatters.get(shape)
        if fmt is None:
            fmt = self._formatters[shape] = copy_text.formatter(
                [c.field for c in columns], [c.kind for c in columns])
        with self.conn.cursor() as cur:
            with cur.copy(statement) as copy:
                batch: list[dict[str, Any]] = []
                for row in rows:
                    batch.append(row)
                    if len(batch) >= 5000:
                        copy.write(fmt(site_id, batch))
                        batch = []
                if batch:
                    copy.write(fmt(site_id, batch))
                failpoint("sink.in_copy")

    def _upsert(self, site_id: str, target: Target, step: Upsert) -> None:
        columns = list(target.columns)
        stage = self._stage(target, columns, "rows")
        self._copy(stage, columns, site_id, step.rows.values())
        self.conn.execute(q.upsert_from_stage(
            target.ident, stage, self.site_column, columns, target.key_columns,
            # append tables: a run of inserts leaves existing rows untouched (ON CONFLICT DO
            # NOTHING: no rewrite, no dead tuple, no decompressed chunk); updates still apply
            append_only=not step.updates and step.version.qualified in self.append_only))

    def _delete(self, site_id: str, target: Target, step: Delete) -> None:
        key = target.key_columns
        stage = self._stage(target, key, "keys")
        self._copy(stage, key, site_id, step.keys.values())
        time_range = None
        if target.time_column is not None:  # hypertable: bounds let TimescaleDB skip chunks
            low, high = self.conn.execute(sql.SQL("SELECT min({0}), max({0}) FROM {1}").format(
                sql.Identifier(target.time_column), sql.Identifier(stage))).fetchone()  # type: ignore[misc]
            if low is not None:
                time_range = (target.time_column, low, high)
        self.conn.execute(q.delete_using_stage(target.ident, stage, self.site_column, key,
                                               time_range))

    def _patch(self, site_id: str, target: Target, step: Patch) -> None:
        set_cols = target.columns_of(step.fields)
        key = target.key_columns
        old_key = [step.old_key[c.field] for c in key]
        new_key = [step.row[c.field] for c in key]
        if new_key != old_key:  # the key moves: a row already there is from later (see q.)
            self.conn.execute(q.delete_moved_onto(target.ident, self.site_column, key),
                              [site_id, *new_key, site_id, *old_key])
        params = [step.row[c.field] for c in set_cols] + [site_id] + old_key
        self.conn.execute(q.update_row(target.ident, self.site_column, set_cols, key), params)

    def _match_fields(self, target: Target) -> list[str]:
        """The fields whose values find one equal row (``q.delete_one``'s parameters after the
        site id): every column, then the hypertable's time column once more."""
        fields = [c.field for c in target.columns]
        if target.time_column is not None:
            fields += [c.field for c in target.columns if c.name == target.time_column]
        return fields

    def _remove_one(self, site_id: str, target: Target, step: RemoveOne) -> None:
        """Each before-image removes one equal row (in order: the second of two equal DELETEs
        sees the first's effect)."""
        stmt = q.delete_one(target.ident, self.site_column, list(target.columns),
                            target.time_column)
        fields = self._match_fields(target)
        self._one_by_one(stmt, [[site_id, *(row[f] for f in fields)] for row in step.rows],
                         target, site_id, "delete")

    def _change_one(self, site_id: str, target: Target, step: ChangeOne) -> None:
        set_cols = target.columns_of(step.fields)
        stmt = q.update_one(target.ident, self.site_column, list(target.columns), set_cols,
                            target.time_column)
        match = self._match_fields(target)
        self._one_by_one(stmt, [[site_id, *(before[f] for f in match),
                                 *(after[c.field] for c in set_cols)]
                                for before, after in step.pairs], target, site_id, "update")

    def _one_by_one(self, stmt: sql.Composed, params: list[list[Any]], target: Target,
                    site_id: str, what: str) -> None:
        missing = 0
        with self.conn.cursor() as cur:
            for p in params:
                cur.execute(stmt, p)
                if cur.rowcount != 1:
                    missing += 1
        if missing:  # the cloud lacked a row the site had: it was not equal to the site before
            log.warning(f"keyless table: {what} found no equal cloud row", extra={
                "site": site_id, "table": target.qualified, "rows": missing})
