"""Column values: from pgoutput's text form to typed Python values, by type OID.

pgoutput sends every value in PostgreSQL's text output form. The event carries each value in
the natural Avro type where one fits without loss, and otherwise as the exact text PostgreSQL
printed, which the cloud's input function reads back bit for bit. Each column also records its
exact PostgreSQL type (with modifiers) so the cloud column is created with the same type.

Pure: no I/O. Types the built-in table does not know (enums, domains, extension types) are
named through a lookup passed in by the caller, which reads the catalog beside the stream.
"""

from __future__ import annotations

import math
import re
import struct
from binascii import unhexlify
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable

from cdc.core.errors import TypeMappingError
from cdc.core.types.temporal import (date_days, date_text, time_micros, time_text, timestamp_micros,
                          timestamp_text)

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
KIND_BOOLEAN, KIND_INT, KIND_LONG, KIND_FLOAT, KIND_DOUBLE, KIND_STRING, KIND_BYTES = (
    "boolean", "int", "long", "float", "double", "string", "bytes")
KIND_UUID, KIND_DATE, KIND_TIME = "uuid", "date", "time-micros"
KIND_TIMESTAMP, KIND_TIMESTAMPTZ = "local-timestamp-micros", "timestamp-micros"
#: numeric(p,s) travels as Avro decimal(p,s); the kind is spelled ``decimal(p,s)``
_DECIMAL = re.compile(r"decimal\((\d+),(\d+)\)\Z")

_KIND_BY_OID: dict[int, str] = {
    BOOL: KIND_BOOLEAN, INT2: KIND_INT, INT4: KIND_INT, INT8: KIND_LONG, OID: KIND_LONG,
    FLOAT4: KIND_FLOAT, FLOAT8: KIND_DOUBLE, BYTEA: KIND_BYTES, UUID: KIND_UUID,
    DATE: KIND_DATE, TIME: KIND_TIME, TIMESTAMP: KIND_TIMESTAMP, TIMESTAMPTZ: KIND_TIMESTAMPTZ,
}

#: Avro type of each logical kind (the primitive kinds are their own Avro type).
_LOGICAL: dict[str, dict[str, str]] = {
    KIND_UUID: {"type": "string", "logicalType": "uuid"},
    KIND_DATE: {"type": "int", "logicalType": "date"},
    KIND_TIME: {"type": "long", "logicalType": "time-micros"},
    KIND_TIMESTAMP: {"type": "long", "logicalType": "local-timestamp-micros"},
    KIND_TIMESTAMPTZ: {"type": "long", "logicalType": "timestamp-micros"},
}

#: Kinds whose PostgreSQL type has values no Avro logical type holds (NaN, +-infinity, the last
#: years of timestamps): those travel as their text in a ``string`` branch after the typed one.
SPECIAL_KINDS = frozenset({KIND_DATE, KIND_TIMESTAMP, KIND_TIMESTAMPTZ})


def decimal_params(kind: str) -> tuple[int, int] | None:
    """(precision, scale) of a ``decimal(p,s)`` kind, else None."""
    m = _DECIMAL.match(kind)
    return (int(m[1]), int(m[2])) if m else None


def has_special(kind: str) -> bool:
    """Whether the kind's union carries a ``string`` branch for NaN and infinities."""
    return kind in SPECIAL_KINDS or kind.startswith("decimal(")


def avro_type(kind: str, nullable: bool) -> Any:
    """The Avro type of a column field: the kind's type, a special ``string`` branch after it
    where the PostgreSQL type has NaN or infinities, a ``null`` branch first when nullable."""
    params = decimal_params(kind)
    if params:
        base: Any = {"type": "bytes", "logicalType": "decimal",
                     "precision": params[0], "scale": params[1]}
    else:
        base = dict(_LOGICAL[kind]) if kind in _LOGICAL else kind
    branches = (["null"] if nullable else []) + [base] + (["string"] if has_special(kind) else [])
    return branches[0] if len(branches) == 1 else branches


def kind_of_avro_type(avro: Any) -> tuple[str, bool] | None:
    """(kind, nullable) of a field type :func:`avro_type` wrote, or None for any other type."""
    branches = list(avro) if isinstance(avro, list) else [avro]
    nullable = bool(branches) and branches[0] == "null"
    if nullable:
        branches = branches[1:]
    if not branches:
        return None
    base = branches[0]
    if isinstance(base, str):
        kind = base
    elif isinstance(base, dict) and base.get("logicalType") == "decimal" \
            and base.get("type") == "bytes":
        kind = f"decimal({base.get('precision')},{base.get('scale', 0)})"
    elif isinstance(base, dict):
        kind = next((k for k, t in _LOGICAL.items() if t == base), "")
    else:
        return None
    if kind not in KNOWN_KINDS and decimal_params(kind) is None:
        return None
    return (kind, nullable) if avro_type(kind, nullable) == avro else None


def _bool(raw: bytes) -> bool:
    return raw == b"t"


def _text(raw: bytes) -> str:
    return raw.decode()


def bytea_value(raw: bytes) -> bytes:
    """bytea's hex output (``\\x0a1b``, pinned by :mod:`cdc.runtime.pgsession`) -> the bytes."""
    if raw[:2] != b"\\x":
        raise ValueError(f"bytea not in hex output form: {raw[:10]!r}")
    return unhexlify(raw[2:])


def decimal_unscaled(raw: bytes, scale: int) -> int:
    """numeric text -> the unscaled integer of Avro's decimal with ``scale``.

    PostgreSQL prints a numeric(p,s) value with exactly s fractional digits, so dropping the
    point is the common case; any other text is scaled exactly or refused."""
    dot = raw.find(b".")
    if (dot < 0 and scale == 0) or (dot >= 0 and len(raw) - dot - 1 == scale):
        return int(raw.replace(b".", b"") if dot >= 0 else raw)
    scaled = Decimal(raw.decode()).scaleb(scale)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{raw.decode()} has more than {scale} fractional digits")
    return int(scaled)


def decimal_bytes(unscaled: int) -> bytes:
    """Avro decimal bytes: big-endian two's complement, as few bytes as fastavro writes."""
    return unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)


def decimal_text(unscaled: int, scale: int) -> str:
    """The unscaled integer of a decimal -> its text with ``scale`` fractional digits."""
    if scale == 0:
        return str(unscaled)
    digits = str(abs(unscaled)).rjust(scale + 1, "0")
    return f"{'-' if unscaled < 0 else ''}{digits[:-scale]}.{digits[-scale:]}"


def is_special(raw: bytes) -> bool:
    """NaN, Infinity, -Infinity, infinity, -infinity: the texts that end in N or y."""
    return raw[-1:] in (b"N", b"y")


LONG_MAX = 2 ** 63 - 1


_INF = math.inf
_F32 = struct.Struct("<f")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")
_U64 = struct.Struct("<Q")
_LOW28 = (1 << 28) - 1


def float4(raw: bytes | str) -> float:
    """A float4's text -> its value (a Python float equal to the float4), rounded ONCE.

    ``float()`` rounds the decimal text to a double, and narrowing that to float4 rounds again:
    when the double lands exactly halfway between two float4 values the second rounding can
    pick the wrong one (``7.038531e-26`` became another float4). PostgreSQL's ``float4in``
    rounds the text straight to float4 (``strtof``); so does this: the double is used as is
    unless it is such a halfway point, and then the exact decimal value decides.
    """
    d = float(raw)
    f = _F32.unpack(_F32.pack(d))[0]
    # a halfway point between two float4 values has 25 significant bits: the low 28 of the
    # double's 52 are zero (the common case, one test on the hot path, is that they are not)
    if f == d or _U64.unpack(_F64.pack(d))[0] & _LOW28 or d != d or f in (_INF, -_INF):
        return f
    bits = _U32.unpack(_F32.pack(f))[0]
    if f == 0.0:
        bits = 1 if d > 0 else 0x80000001
    else:
        bits += 1 if (d > f) == (f > 0) else -1
    g = _F32.unpack(_U32.pack(bits))[0]  # the float4 on the other side of d
    if (f + g) / 2 != d:
        return f  # d is not halfway: one rounding of the text gives the same float4
    exact = Fraction(raw.decode() if isinstance(raw, bytes) else raw)
    df, dg = abs(exact - Fraction(f)), abs(exact - Fraction(g))
    if df != dg:
        return f if df < dg else g
    return f if _U32.unpack(_F32.pack(f))[0] % 2 == 0 else g  # a true tie: to even


def beyond_timestamp_micros(raw: bytes) -> bool:
    """A timestamp past 294247-01-10 04:00:54.775807 UTC: PostgreSQL counts from 2000, Avro from
    1970, so its last 30 years do not fit Avro's long. Only five- and six-digit years are checked
    (their fifth character is a digit)."""
    return raw[4:5] != b"-" and timestamp_micros(raw) > LONG_MAX


#: text bytes -> Python value, per primitive kind (float() reads NaN, Infinity, -Infinity and -0;
#: float4 rounds the text once, as PostgreSQL does).
CONVERTERS: dict[str, Callable[[bytes], Any]] = {
    KIND_BOOLEAN: _bool, KIND_INT: int, KIND_LONG: int, KIND_FLOAT: float4, KIND_DOUBLE: float,
    KIND_STRING: _text, KIND_BYTES: bytea_value, KIND_UUID: _text, KIND_DATE: date_days,
    KIND_TIME: time_micros, KIND_TIMESTAMP: timestamp_micros, KIND_TIMESTAMPTZ: timestamp_micros,
}
KNOWN_KINDS = frozenset(CONVERTERS)


def converter(kind: str) -> Callable[[bytes], Any]:
    """text bytes -> the value a general Avro writer takes for this kind (special values as
    their text): the meaning of each kind. The source's compiled encoders (cdc.core.wire.row_encoder) are
    tested against it."""
    params = decimal_params(kind)
    if params:
        scale = params[1]
        typed: Callable[[bytes], Any] = lambda raw: decimal_bytes(decimal_unscaled(raw, scale))
    else:
        typed = CONVERTERS[kind]
    if not has_special(kind):
        return typed
    if kind in (KIND_TIMESTAMP, KIND_TIMESTAMPTZ):
        return lambda raw: raw.decode() if is_special(raw) or beyond_timestamp_micros(raw) \
            else typed(raw)
    return lambda raw: raw.decode() if is_special(raw) else typed(raw)


def _bytea_text(value: bytes) -> str:
    return "\\x" + value.hex()


_TEXT_OF: dict[str, Callable[[Any], str]] = {
    KIND_BYTES: _bytea_text, KIND_DATE: date_text, KIND_TIME: time_text,
    KIND_TIMESTAMP: lambda us: timestamp_text(us, utc=False),
    KIND_TIMESTAMPTZ: lambda us: timestamp_text(us, utc=True),
}


def text_converter(kind: str) -> Callable[[Any], str] | None:
    """Avro value of a logical kind -> PostgreSQL input text (special values pass as they are),
    for the sink; None for kinds whose Avro value COPY takes as it is."""
    params = decimal_params(kind)
    if params:
        scale = params[1]
        typed: Callable[[Any], str] = lambda b: decimal_text(
            int.from_bytes(b, "big", signed=True), scale)
    elif kind in _TEXT_OF:
        typed = _TEXT_OF[kind]
    else:
        return None
    if not has_special(kind):
        return typed
    return lambda v: v if type(v) is str else typed(v)


def value_kind(type_oid: int, typmod: int = -1) -> str:
    """The Avro kind a column of this type travels as."""
    if type_oid == NUMERIC and typmod >= 4:
        precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
        if 0 <= scale <= precision:  # negative scales and scale > precision: no Avro decimal
            return f"decimal({precision},{scale})"
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


TypeLookup = Callable[[int, int], "str | ColumnType"]
"""(type OID, typmod) -> the column type from the site catalog (:mod:`cdc.core.types.catalog`), or
just its SQL name (then it travels as text)."""


@dataclass(frozen=True, slots=True)
class ColumnType:
    """How one column travels: its exact PostgreSQL type and its Avro kind, and for types that
    are not built in what the cloud needs (:mod:`cdc.core.types.catalog`)."""

    sql: str
    kind: str
    domain: str | None = None  # the site's domain, when the column travels as its base type
    defs: tuple[Any, ...] = ()  # TypeDefs (enums, composites, ranges) the cloud must have
    extension: str | None = None  # the extension the type comes from


def column_type(type_oid: int, typmod: int, lookup: TypeLookup | None,
                where: str = "") -> ColumnType:
    """Resolve a column's type from the built-in table, else through ``lookup``.

    ``where`` names the table and column for the error message.
    """
    sql = builtin_type_sql(type_oid, typmod)
    if sql is not None:
        return ColumnType(sql=sql, kind=value_kind(type_oid, typmod))
    if lookup is None:
        raise TypeMappingError(
            f"{where}: type OID {type_oid} is not built in and no catalog lookup is available")
    try:
        found = lookup(type_oid, typmod)
    except TypeMappingError as exc:
        raise TypeMappingError(f"{where}: {exc}") from exc
    except Exception as exc:  # the lookup is I/O: name the column in what the user sees
        raise TypeMappingError(f"{where}: cannot name type OID {type_oid}: {exc}") from exc
    if isinstance(found, str):
        return ColumnType(sql=found, kind=value_kind(type_oid, typmod))
    return found
