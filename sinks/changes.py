"""The sink's view of records: table versions read from schemas, and decoded changes.

A table version is everything the writer schema says about a site table: its name, its columns
with their exact PostgreSQL types and which are key columns. A change is one decoded change
event, tied to its table version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Callable

from cdc.core.wire.avro import Codec
from cdc.core.errors import SchemaError
from cdc.core.types.catalog import TypeDef
from cdc.core.types.kind import Kind
from cdc.core.types.mapping import kind_of_avro_type


@dataclass(frozen=True, slots=True)
class ColumnDef:
    field: str  # Avro field name in the row record
    name: str  # PostgreSQL column name
    sql_type: str
    is_key: bool
    kind: Kind | None = None  # how its values travel; None: a writer schema not ours
    defs: tuple[TypeDef, ...] = ()  # user-defined types the cloud needs for this column
    extension: str | None = None  # the site extension the column's type comes from
    attnum: int | None = None  # the column's number at the site (a rename keeps it)
    missing: str | None = None  # what site rows older than the column hold (ADD ... DEFAULT)


def _kind(t: Any) -> Kind | None:
    """The kind of a field's Avro type, when it is one the source writes."""
    found = kind_of_avro_type(t)
    return None if found is None else found[0]


@dataclass(frozen=True, slots=True)
class TableVersion:
    """One version of a site table, from an envelope schema."""

    fingerprint: int
    schema: str
    table: str
    columns: tuple[ColumnDef, ...]
    relid: int | None = None  # the site table's OID: a dropped and re-created table has another
    keyless: bool = False  # REPLICA IDENTITY FULL without a primary key: a multiset
    hypertable: dict[str, Any] | None = field(default=None, compare=False)  # time_column, ...
    key_columns: tuple[ColumnDef, ...] = field(default=(), compare=False)
    key_fields: tuple[str, ...] = field(default=(), compare=False)
    key_of: Callable[[dict[str, Any]], tuple] = field(default=tuple, compare=False, repr=False)

    def __post_init__(self) -> None:
        keys = tuple(c for c in self.columns if c.is_key)
        names = tuple(c.field for c in keys)
        object.__setattr__(self, "key_columns", keys)
        object.__setattr__(self, "key_fields", names)
        # a row's key tuple, at C speed (itemgetter of one field returns the bare value)
        getter = itemgetter(*names) if names else (lambda row: ())
        key_of = getter if len(names) > 1 else (lambda row: (getter(row),))
        object.__setattr__(self, "key_of", key_of)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @classmethod
    def from_codec(cls, codec: Codec) -> "TableVersion":
        schema = codec.schema
        try:
            before = schema["fields"][0]
            row = before["type"][1]
            columns = tuple(ColumnDef(
                f["name"], f["pg.name"], f["pg.type"], bool(f["pg.key"]), _kind(f["type"]),
                tuple(TypeDef.from_json(d) for d in f.get("pg.defs", ())), f.get("pg.extension"),
                f.get("pg.attnum"), f.get("pg.missing"))
                for f in row["fields"])
            version = cls(codec.fingerprint, schema["pg.schema"], schema["pg.table"], columns,
                          schema.get("pg.relid"), bool(schema.get("pg.nullable_key")),
                          schema.get("pg.hypertable"))
        except (KeyError, IndexError, TypeError) as exc:
            raise SchemaError(f"schema {codec.fingerprint:016x} is not a Tributary change envelope: "
                              f"missing {exc}") from exc
        if not version.key_columns:
            raise SchemaError(f"{version.qualified}: the event schema names no key column")
        return version


@dataclass(slots=True)
class Change:
    """One row change of a site transaction, as the sink applies it."""

    version: TableVersion
    op: str  # c u d r t
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    unchanged: list[str]  # Avro fields whose values were not sent (unchanged TOAST)
