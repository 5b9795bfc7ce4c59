"""The relation cache: what each table looks like at this point of the stream.

It is fed only by pgoutput Relation messages, which are the truth at that point of the stream
(the catalog describes the present, which may already differ). Facts from elsewhere, such as the
SQL name of a non-built-in type, come in through a lookup passed by the caller.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from cdc.core.errors import SchemaError
from cdc.core.wire.model import ColumnInfo, TableInfo, avro_field_name
from cdc.source.pgoutput import Relation
from cdc.source.timescale import Hypertable
from cdc.core.types.mapping import TypeLookup, column_type

KeyLookup = Callable[[int], "tuple[str, ...] | None"]
"""Relation OID -> its primary key column names from the site catalog, or None."""

ColumnLookup = Callable[[int], "dict[str, tuple[int, str | None]]"]
"""Relation OID -> column name -> (attnum, the value rows older than the column read for it,
from ``attmissingval``), from the site catalog."""


def _key_names(rel: Relation, key_lookup: KeyLookup | None, table_oid: int) -> set[str]:
    """The row identity: the replica identity columns pgoutput flags, except for REPLICA
    IDENTITY FULL, where pgoutput flags every column: then the primary key, when there is one."""
    flagged = {c.name for c in rel.columns if c.is_key}
    if rel.replica_identity == "f" and key_lookup is not None:
        primary = key_lookup(table_oid)
        if primary and set(primary) <= {c.name for c in rel.columns}:
            return set(primary)
    return flagged


def table_info(rel: Relation, lookup: TypeLookup | None,
               key_lookup: KeyLookup | None = None,
               column_lookup: ColumnLookup | None = None,
               table_oid: int | None = None) -> TableInfo:
    """Describe a Relation message's table, naming each column's exact type.

    Each column's attnum (from the catalog, when the column still has that name) lets the sink
    tell a renamed column from a dropped one and an added one. ``table_oid`` is the OID that
    identifies the table when it is not the relation's own (a TimescaleDB chunk's hypertable;
    0 when unknown): catalog facts are read from it, and the events carry it."""
    oid = rel.oid if table_oid is None else table_oid
    keys = _key_names(rel, key_lookup, oid or rel.oid)
    catalog = column_lookup(oid or rel.oid) if column_lookup is not None else {}
    columns = []
    for index, col in enumerate(rel.columns):
        where = f"{rel.namespace}.{rel.name}.{col.name}"
        ctype = column_type(col.type_oid, col.type_modifier, lookup, where)
        attnum, missing = catalog.get(col.name, (None, None))
        columns.append(ColumnInfo(
            name=col.name, field=avro_field_name(col.name, index), sql_type=ctype.sql,
            kind=ctype.kind, is_key=col.name in keys, type_oid=col.type_oid,
            type_modifier=col.type_modifier, domain=ctype.domain, defs=ctype.defs,
            extension=ctype.extension, attnum=attnum, missing=missing))
    fields = [c.field for c in columns]
    if len(set(fields)) != len(fields):
        raise SchemaError(f"{rel.namespace}.{rel.name}: column names collide as Avro names: {fields}")
    return TableInfo(oid=oid, schema=rel.namespace, table=rel.name,
                     replica_identity=rel.replica_identity, columns=tuple(columns))


class RelationCache:
    """Relation OID -> the latest TableInfo the stream sent for it.

    Protocol state, not a cache that may evict: pgoutput describes a relation once per session,
    so an entry leaves only when its relation is gone from the site and the stream has passed
    the drop (:mod:`cdc.source.dropped`), which keeps it bounded by the relations that exist.
    """

    def __init__(self, lookup: TypeLookup | None = None,
                 key_lookup: KeyLookup | None = None,
                 column_lookup: ColumnLookup | None = None,
                 hypertable_of: Callable[[int], Hypertable | None] | None = None) -> None:
        self._lookup = lookup
        self._hypertable_of = hypertable_of
        self._key_lookup = key_lookup
        self._column_lookup = column_lookup
        self._tables: dict[int, TableInfo] = {}
        self._messages: dict[int, Relation] = {}

    def update(self, rel: Relation) -> TableInfo:
        hypertable = self._hypertable_of(rel.oid) if self._hypertable_of is not None else None
        # chunks of one hypertable are one table: its OID (0 when unknown) and its catalog facts
        table_oid = rel.oid if hypertable is None else (hypertable.relid or 0)
        info = table_info(rel, self._lookup, self._key_lookup, self._column_lookup, table_oid)
        if hypertable is not None and hypertable.time_column:
            info = replace(info, hypertable=(hypertable.time_column, hypertable.chunk_interval))
        self._tables[rel.oid] = info
        self._messages[rel.oid] = rel
        return info

    def refresh(self, oid: int) -> TableInfo:
        """Describe a table again from its last Relation message with fresh catalog facts
        (an enum gained a label: no Relation message says so)."""
        forget = getattr(self._lookup, "forget", None)
        if forget is not None:
            forget()
        self.get(oid)
        return self.update(self._messages[oid])

    def oids(self) -> set[int]:
        """The relations described so far (and not forgotten)."""
        return set(self._tables)

    def forget(self, oids: set[int]) -> None:
        """Drop relations the site dropped, once the stream is past their drop."""
        for oid in oids:
            self._tables.pop(oid, None)
            self._messages.pop(oid, None)

    def __len__(self) -> int:
        return len(self._tables)

    def get(self, oid: int) -> TableInfo:
        try:
            return self._tables[oid]
        except KeyError:
            raise SchemaError(
                f"relation OID {oid} used before the stream described it (no Relation message)"
            ) from None
