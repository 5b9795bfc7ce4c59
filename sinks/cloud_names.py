"""Which cloud names a site's events may reach.

A site is outside the data centre and may be compromised; its events name the schemas,
tables, types and columns the sink creates and writes. The sink's bookkeeping (schema
``tributary``), the system catalogs (``pg_*``, ``information_schema``) and TimescaleDB's
internals (``_timescaledb_*``) are no site's to write, whatever the stream says or
``[sink.tables]`` maps; and a site column named like ``sink.site_column`` would let a site
choose whose rows it writes. Each is refused by name, before any statement runs.

Pure: names in, an error out.
"""

from __future__ import annotations

from cdc.core import ledger
from cdc.core.errors import ReservedNameError
from sinks.changes import TableVersion

RESERVED_SCHEMAS = frozenset({ledger.SCHEMA, "information_schema"})
RESERVED_PREFIXES = ("pg_", "_timescaledb")


def reserved_schema(schema: str) -> bool:
    """Whether ``schema`` is the sink's, PostgreSQL's or TimescaleDB's own."""
    return schema in RESERVED_SCHEMAS or schema.startswith(RESERVED_PREFIXES)


def check_names(version: TableVersion, cloud_schema: str, site_column: str, site_id: str) -> None:
    """Refuse a table version whose site table, cloud table, types or columns reach a name
    no site may write."""
    where = f"site {site_id}: site table {version.qualified}"
    for schema, what in ((version.schema, "its schema"), (cloud_schema, "its cloud schema")):
        if reserved_schema(schema):
            raise ReservedNameError(
                f"{where}: {what} {schema} is reserved (the sink's bookkeeping, the system "
                "catalogs or TimescaleDB's internals); no site's rows are written there")
    for col in version.columns:
        if col.name == site_column:
            raise ReservedNameError(
                f"{where}: column {col.name} is reserved: it is sink.site_column, which says "
                "whose row each is; rename the site column or change sink.site_column")
        for d in col.defs:
            if reserved_schema(d.schema):
                raise ReservedNameError(
                    f"{where}: column {col.name} has type {d.sql_name} in reserved schema "
                    f"{d.schema}; no site's types are created there")
