"""Column types: from a PostgreSQL type (OID, typmod) to its exact SQL name and its kind.

pgoutput sends every value in PostgreSQL's text output form. The event carries each value in
the natural Avro type where one fits without loss, and otherwise as the exact text PostgreSQL
printed, which the cloud's input function reads back bit for bit. Each column also records its
exact PostgreSQL type (with modifiers) so the cloud column is created with the same type.

Each type family's module owns its kinds (:class:`~cdc.core.types.kind.Kind`); this module
gathers them: which kind a type travels as, a field's Avro type and back, the general meaning
of a kind (:func:`converter`, :func:`text_converter`), which cloud type holds which site type.

Pure: no I/O. Types the built-in table does not know (enums, domains, extension types) are
named through a lookup passed in by the caller, which reads the catalog beside the stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from cdc.core.errors import TypeMappingError
from cdc.core.types import binary, boolean, floats, integers, numeric, temporal, text
from cdc.core.types.kind import Kind, is_special_text

#: every kind with a fixed name (numeric's ``decimal(p,s)`` kinds: :func:`numeric.decimal_kind`)
KINDS: tuple[Kind, ...] = (boolean.KINDS + integers.KINDS + floats.KINDS + temporal.KINDS
                           + binary.KINDS + text.KINDS)
_BY_NAME = {k.name: k for k in KINDS}
_BY_LOGICAL = {k.avro["logicalType"]: k for k in KINDS if isinstance(k.avro, dict)}
_KIND_BY_OID: dict[int, Kind] = {**boolean.BY_OID, **integers.BY_OID, **floats.BY_OID,
                                 **temporal.BY_OID, **binary.BY_OID, **text.BY_OID}

#: built-in scalar types: OID -> SQL name as ``format_type`` prints it without modifiers
BUILTIN_TYPE_NAMES: dict[int, str] = {
    **boolean.SQL_NAMES, **integers.SQL_NAMES, **floats.SQL_NAMES, **numeric.SQL_NAMES,
    **temporal.SQL_NAMES, **binary.SQL_NAMES, **text.SQL_NAMES}

#: built-in array types: array OID -> element OID (arrays travel as their text)
BUILTIN_ARRAY_ELEMENTS: dict[int, int] = {
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1016: 20, 1005: 21, 1007: 23, 1009: 25, 1028: 26,
    199: 114, 143: 142, 1021: 700, 1022: 701, 791: 790, 1014: 1042, 1015: 1043, 1182: 1082,
    1183: 1083, 1115: 1114, 1185: 1184, 1187: 1186, 1270: 1266, 1561: 1560, 1563: 1562,
    1231: 1700, 2951: 2950, 3807: 3802, 651: 650, 1041: 869, 1040: 829, 775: 774,
    3643: 3614, 3221: 3220,
}

#: names the families' encoder lines use (:mod:`cdc.core.wire.row_encoder` adds Avro's own)
ENCODER_SCOPE: dict[str, Any] = {**floats.ENCODER_HELPERS, **numeric.ENCODER_HELPERS,
                                 **temporal.ENCODER_HELPERS, **binary.ENCODER_HELPERS}
#: names the families' COPY expressions use
COPY_SCOPE: dict[str, Any] = {**text.COPY_HELPERS, **floats.COPY_HELPERS}

_WIDENING = (integers.holds, text.holds, numeric.holds, temporal.holds)


def value_kind(type_oid: int, typmod: int = -1) -> Kind:
    """The kind a column of this type travels as."""
    if type_oid == numeric.NUMERIC:
        return numeric.kind_for(typmod) or text.STRING
    return _KIND_BY_OID.get(type_oid, text.STRING)


def avro_type(kind: Kind, nullable: bool) -> Any:
    """The Avro type of a column field: the kind's type, a special ``string`` branch after it
    where the PostgreSQL type has NaN or infinities, a ``null`` branch first when nullable."""
    base = dict(kind.avro) if isinstance(kind.avro, dict) else kind.avro
    branches = (["null"] if nullable else []) + [base] + (["string"] if kind.special else [])
    return branches[0] if len(branches) == 1 else branches


def kind_of_avro_type(avro: Any) -> tuple[Kind, bool] | None:
    """(kind, nullable) of a field type :func:`avro_type` wrote, or None for any other type."""
    branches = list(avro) if isinstance(avro, list) else [avro]
    nullable = bool(branches) and branches[0] == "null"
    if nullable:
        branches = branches[1:]
    if not branches:
        return None
    base = branches[0]
    kind: Kind | None
    if isinstance(base, str):
        kind = _BY_NAME.get(base)
    elif isinstance(base, dict) and base.get("logicalType") == "decimal":
        precision, scale = base.get("precision"), base.get("scale", 0)
        kind = numeric.decimal_kind(precision, scale) if type(precision) is int \
            and type(scale) is int and 0 <= scale <= precision else None
    elif isinstance(base, dict):
        kind = _BY_LOGICAL.get(base.get("logicalType"))  # type: ignore[arg-type]
    else:
        return None
    if kind is None:
        return None
    return (kind, nullable) if avro_type(kind, nullable) == avro else None


def converter(kind: Kind) -> Callable[[bytes], Any]:
    """text bytes -> the value a general Avro writer takes for this kind (special values as
    their text): the meaning of each kind. The source's compiled encoders
    (:mod:`cdc.core.wire.row_encoder`) are tested against it."""
    typed, beyond = kind.from_text, kind.beyond
    if not kind.special:
        return typed
    if beyond is not None:
        return lambda raw: raw.decode() if is_special_text(raw) or beyond(raw) else typed(raw)
    return lambda raw: raw.decode() if is_special_text(raw) else typed(raw)


def text_converter(kind: Kind) -> Callable[[Any], str] | None:
    """Avro value of a kind -> PostgreSQL input text (special values pass as they are), for
    the sink; None for kinds whose Avro value COPY takes as it is."""
    typed = kind.to_text
    if typed is None or not kind.special:
        return typed
    return lambda v: v if type(v) is str else typed(v)


def can_hold(cloud_type: str, site_type: str) -> bool:
    """Whether every value of ``site_type`` fits ``cloud_type`` unchanged: the cloud keeps a
    column that holds the site's, and widens one the site's type holds."""
    if cloud_type == site_type:
        return True
    for holds in _WIDENING:
        verdict = holds(cloud_type, site_type)
        if verdict is not None:
            return verdict
    return False


def builtin_type_sql(type_oid: int, typmod: int) -> str | None:
    """The SQL type of a built-in type with its modifiers, or None if not built in."""
    if type_oid in BUILTIN_ARRAY_ELEMENTS:
        element = builtin_type_sql(BUILTIN_ARRAY_ELEMENTS[type_oid], typmod)
        return None if element is None else element + "[]"
    name = BUILTIN_TYPE_NAMES.get(type_oid)
    if name is None:
        return None
    if type_oid in temporal.SQL_NAMES:
        return temporal.sql_name(type_oid, typmod)
    if type_oid == numeric.NUMERIC:
        return name + numeric.sql_suffix(typmod)
    return name + text.sql_suffix(type_oid, typmod)


TypeLookup = Callable[[int, int], "str | ColumnType"]
"""(type OID, typmod) -> the column type from the site catalog (:mod:`cdc.core.types.catalog`),
or just its SQL name (then it travels as text)."""


@dataclass(frozen=True, slots=True)
class ColumnType:
    """How one column travels: its exact PostgreSQL type and its kind, and for types that
    are not built in what the cloud needs (:mod:`cdc.core.types.catalog`)."""

    sql: str
    kind: Kind
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
