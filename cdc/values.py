"""Column values: from pgoutput's text form to typed Python values, by type OID.

pgoutput sends every value in PostgreSQL's text output form. The event carries each value in
the natural Avro type where one fits without loss, and otherwise as the exact text PostgreSQL
printed, which the cloud's input function reads back bit for bit. Each column also records its
exact PostgreSQL type (with modifiers) so the cloud column is created with the same type.

Pure: no I/O. Types the built-in table does not know (enums, domains, extension types) are
named through a lookup passed in by the caller, which reads the catalog beside the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from cdc.errors import TypeMappingError

# Built-in type OIDs (pg_type.h). Only what the mapping needs.
BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, XML, FLOAT4, FLOAT8, MONEY = 114, 142, 700, 701, 790
BPCHAR, VARCHAR, DATE, TIME, TIMESTAMP, TIMESTAMPTZ, INTERVAL, TIMETZ = (
    1042, 1043, 1082, 1083, 1114, 1184, 1186, 1266)
BIT, VARBIT, NUMERIC, UUID, JSONB = 1560, 1562, 1700, 2950, 3802

#: Built-in scalar types: OID -> SQL name as ``format_type`` prints it without modifiers.
BUILTIN_TYPE_NAMES: dict[int, str] = {
    BOOL: "boolean", BYTEA: "bytea", CHAR: '"char"', NAME: "name", INT8: "bigint",
    INT2: "smallint", INT4: "integer", TEXT: "text", OID: "oid", JSON: "json", XML: "xml",
    FLOAT4: "real", FLOAT8: "double precision", MONEY: "money", BPCHAR: "character",
    VARCHAR: "character varying", DATE: "date", TIME: "time without time zone",
    TIMESTAMP: "timestamp without time zone", TIMESTAMPTZ: "timestamp with time zone",
    INTERVAL: "interval", TIMETZ: "time with time zone", BIT: "bit", VARBIT: "bit varying",
    NUMERIC: "numeric", UUID: "uuid", JSONB: "jsonb",
    650: "cidr", 869: "inet", 829: "macaddr", 774: "macaddr8", 3614: "tsvector",
    3615: "tsquery", 3220: "pg_lsn", 24: "regproc", 2205: "regclass", 2206: "regtype",
    28: "xid", 27: "tid", 600: "point", 601: "lseg", 602: "path", 603: "box", 604: "polygon",
    628: "line", 718: "circle", 3904: "int4range", 3926: "int8range", 3906: "numrange",
    3908: "tsrange", 3910: "tstzrange", 3912: "daterange", 4451: "int4multirange",
    4536: "int8multirange", 4532: "nummultirange", 4533: "tsmultirange",
    4534: "tstzmultirange", 4535: "datemultirange", 2970: "txid_snapshot",
    5038: "pg_snapshot",
}

#: Built-in array types: array OID -> element OID.
BUILTIN_ARRAY_ELEMENTS: dict[int, int] = {
    1000: BOOL, 1001: BYTEA, 1002: CHAR, 1003: NAME, 1016: INT8, 1005: INT2, 1007: INT4,
    1009: TEXT, 1028: OID, 199: JSON, 143: XML, 1021: FLOAT4, 1022: FLOAT8, 791: MONEY,
    1014: BPCHAR, 1015: VARCHAR, 1182: DATE, 1183: TIME, 1115: TIMESTAMP, 1185: TIMESTAMPTZ,
    1187: INTERVAL, 1270: TIMETZ, 1561: BIT, 1563: VARBIT, 1231: NUMERIC, 2951: UUID,
    3807: JSONB, 651: 650, 1041: 869, 1040: 829, 775: 774, 3643: 3614, 3221: 3220,
}

# Avro representation of a column value (the "kind"): how text becomes a value and back.
KIND_BOOLEAN, KIND_INT, KIND_LONG, KIND_FLOAT, KIND_DOUBLE, KIND_STRING = (
    "boolean", "int", "long", "float", "double", "string")

_KIND_BY_OID: dict[int, str] = {
    BOOL: KIND_BOOLEAN, INT2: KIND_INT, INT4: KIND_INT, INT8: KIND_LONG, OID: KIND_LONG,
    FLOAT4: KIND_FLOAT, FLOAT8: KIND_DOUBLE,
}


def _bool(raw: bytes) -> bool:
    return raw == b"t"


def _text(raw: bytes) -> str:
    return raw.decode()


#: text bytes -> Python value, per kind (float() reads NaN, Infinity, -Infinity and -0): the
#: meaning of each kind. The source's compiled encoders (cdc.avro_rows) are tested against it.
CONVERTERS: dict[str, Callable[[bytes], Any]] = {
    KIND_BOOLEAN: _bool, KIND_INT: int, KIND_LONG: int, KIND_FLOAT: float, KIND_DOUBLE: float,
    KIND_STRING: _text,
}


def value_kind(type_oid: int) -> str:
    """The Avro kind a column of this type travels as."""
    return _KIND_BY_OID.get(type_oid, KIND_STRING)


def _typmod_suffix(type_oid: int, typmod: int) -> str:
    """The ``(...)`` modifier part of a built-in type, as ``format_type`` prints it."""
    if typmod < 0:
        return ""
    if type_oid == NUMERIC:
        precision = ((typmod - 4) >> 16) & 0xFFFF
        scale = (typmod - 4) & 0xFFFF
        if scale & 0x400:  # negative scales (PostgreSQL 15+) are stored as 11-bit two's complement
            scale -= 0x800
        return f"({precision},{scale})"
    if type_oid in (VARCHAR, BPCHAR):
        return f"({typmod - 4})"
    if type_oid in (BIT, VARBIT):
        return f"({typmod})"
    if type_oid in (TIMESTAMP, TIMESTAMPTZ, TIME, TIMETZ):
        return f"({typmod})"
    return ""


def builtin_type_sql(type_oid: int, typmod: int) -> str | None:
    """The SQL type of a built-in type with its modifiers, or None if not built in."""
    if type_oid in BUILTIN_ARRAY_ELEMENTS:
        element = builtin_type_sql(BUILTIN_ARRAY_ELEMENTS[type_oid], typmod)
        return None if element is None else element + "[]"
    name = BUILTIN_TYPE_NAMES.get(type_oid)
    if name is None or (type_oid == INTERVAL and typmod >= 0):
        return None  # interval modifiers carry field names: let the catalog print them
    suffix = _typmod_suffix(type_oid, typmod)
    if suffix and name.endswith(" time zone"):
        # format_type prints "timestamp(3) with time zone"
        head, _, tail = name.partition(" with")
        if tail:
            return f"{head}{suffix} with{tail}"
        head, _, tail = name.partition(" without")
        return f"{head}{suffix} without{tail}"
    return name + suffix


TypeLookup = Callable[[int, int], str]
"""(type OID, typmod) -> SQL type as ``format_type`` prints it; reads the site catalog."""


@dataclass(frozen=True, slots=True)
class ColumnType:
    """How one column travels: its exact PostgreSQL type and its Avro kind."""

    sql: str
    kind: str


def column_type(type_oid: int, typmod: int, lookup: TypeLookup | None,
                where: str = "") -> ColumnType:
    """Resolve a column's type from the built-in table, else through ``lookup``.

    ``where`` names the table and column for the error message.
    """
    sql = builtin_type_sql(type_oid, typmod)
    if sql is None:
        if lookup is None:
            raise TypeMappingError(
                f"{where}: type OID {type_oid} is not built in and no catalog lookup is available")
        try:
            sql = lookup(type_oid, typmod)
        except Exception as exc:  # the lookup is I/O: name the column in what the user sees
            raise TypeMappingError(f"{where}: cannot name type OID {type_oid}: {exc}") from exc
    return ColumnType(sql=sql, kind=value_kind(type_oid))
