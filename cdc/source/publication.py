"""The publication at a site and the tables it selects.

The source creates its publication when missing and adds tables created later that its
patterns select (``site.tables`` minus ``site.exclude``, ``schema.table`` globs resolved against
the catalog); it never drops one. A table whose updates and deletes cannot be replicated (no
key, REPLICA IDENTITY NOTHING) is named with the statement that fixes it.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from typing import Callable

import psycopg
from psycopg import sql

from cdc.core.errors import ReplicationError
from cdc.source.timescale import (CHUNK_SCHEMA)

log = logging.getLogger(__name__)


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


