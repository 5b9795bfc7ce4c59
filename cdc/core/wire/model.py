"""The event model both wings share: what a table version is, the keys of control records,
and the marker for a value the site did not send."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from cdc.core.types.catalog import TypeDef
from cdc.core.types.kind import Kind

#: Kafka key of control records (Begin, Commit): compacted topics need a key on every record.
CONTROL_KEY = b"\x00tributary.tx"
#: Kafka key of Position records: compaction keeps the latest
POSITION_KEY = b"\x00tributary.position"

Record = tuple[bytes, bytes | None]
"""An encoded Kafka record: (key, value); value None is a tombstone."""


class UnchangedToast(enum.Enum):
    """Type of :data:`UNCHANGED_TOAST`, the marker for a TOASTed value the change left unchanged."""

    UNCHANGED_TOAST = "u"

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    __str__ = __repr__


#: Column value ``'u'``: an out-of-line TOASTed value that the change did not modify; the server
#: did not send it, a consumer must keep the value it already has.
UNCHANGED_TOAST = UnchangedToast.UNCHANGED_TOAST


_AVRO_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def avro_field_name(name: str, index: int) -> str:
    """An Avro-legal field name for a column; the PostgreSQL name travels beside it."""
    if _AVRO_NAME.match(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not cleaned or cleaned[0].isdigit():
        cleaned = "_" + cleaned
    return f"{cleaned}__{index}"


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One column as the stream described it."""

    name: str
    field: str  # Avro field name
    sql_type: str  # exact PostgreSQL type, e.g. "numeric(10,2)"
    kind: Kind  # how its values travel (cdc.core.types.kind)
    is_key: bool
    type_oid: int
    type_modifier: int
    domain: str | None = None  # the site's domain type, when the column travels as its base
    defs: tuple[TypeDef, ...] = ()  # user-defined types the cloud must have for this column
    extension: str | None = None  # the extension the column's type comes from
    attnum: int | None = None  # from the catalog when the Relation message was read
    missing: str | None = None  # what rows older than an added column hold (ADD ... DEFAULT)


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A table version: its identity, columns and key, from one Relation message."""

    oid: int  # the table's OID (a chunk's hypertable for TimescaleDB; 0 when unknown)
    schema: str
    table: str
    replica_identity: str
    columns: tuple[ColumnInfo, ...]
    hypertable: tuple[str, int | None] | None = None  # TimescaleDB: (time column, interval)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def key_columns(self) -> tuple[ColumnInfo, ...]:
        return tuple(c for c in self.columns if c.is_key)

    @property
    def nullable_key(self) -> bool:
        """REPLICA IDENTITY FULL without a primary key: the whole row is the key, NULLs included."""
        return self.replica_identity == "f" and len(self.key_columns) == len(self.columns)
