"""Type naming by OID and typmod, and text -> value conversion."""

import math

import pytest

from cdc.errors import TypeMappingError
from cdc.values import CONVERTERS, builtin_type_sql, column_type, value_kind


@pytest.mark.parametrize("oid, typmod, expected", [
    (23, -1, "integer"),
    (1700, (10 << 16 | 2) + 4, "numeric(10,2)"),
    (1700, -1, "numeric"),
    (1043, 14, "character varying(10)"),
    (1042, 5, "character(1)"),
    (1184, 3, "timestamp(3) with time zone"),
    (1114, -1, "timestamp without time zone"),
    (1560, 8, "bit(8)"),
    (1007, -1, "integer[]"),
    (1015, 36, "character varying(32)[]"),
    (18, -1, '"char"'),
])
def test_builtin_type_sql_matches_format_type(oid: int, typmod: int, expected: str) -> None:
    assert builtin_type_sql(oid, typmod) == expected


def test_unknown_type_goes_through_lookup_and_names_the_column() -> None:
    assert column_type(99999, -1, lambda o, t: "public.mood", "t.c").sql == "public.mood"
    with pytest.raises(TypeMappingError, match="t.c: type OID 99999"):
        column_type(99999, -1, None, "t.c")

    def broken(oid: int, typmod: int) -> str:
        raise LookupError("gone")
    with pytest.raises(TypeMappingError, match="t.c: cannot name type OID 99999: gone"):
        column_type(99999, -1, broken, "t.c")


def test_interval_with_fields_is_named_by_the_catalog() -> None:
    assert builtin_type_sql(1186, -1) == "interval"
    assert builtin_type_sql(1186, 0x7FFF0000) is None


def test_converters_keep_edge_values() -> None:
    f = CONVERTERS[value_kind(701)]
    assert math.isnan(f(b"NaN")) and f(b"Infinity") == math.inf and f(b"-Infinity") == -math.inf
    assert math.copysign(1, f(b"-0")) == -1
    assert CONVERTERS[value_kind(20)](b"-9223372036854775808") == -(2 ** 63)
    assert CONVERTERS[value_kind(16)](b"t") is True and CONVERTERS[value_kind(16)](b"f") is False
    assert CONVERTERS[value_kind(1700)](b"12.3400") == "12.3400"  # numeric travels as its text
