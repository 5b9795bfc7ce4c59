"""Type naming by OID and typmod, and text -> value conversion."""

import math
import struct
from datetime import datetime, timedelta
from typing import Callable

import pytest
from hypothesis import given, settings, strategies as st

from cdc.core.errors import TypeMappingError
from cdc.core.types.temporal import (DAY_US, _timestamp_micros_any, days_from_civil, timestamp_micros,
                          timestamp_text)
from cdc.core.types.floats import float4
from cdc.core.types.kind import Kind
from cdc.core.types.mapping import (KINDS, avro_type, builtin_type_sql, column_type, converter,
                                    kind_of_avro_type, text_converter, value_kind)
from cdc.core.types.numeric import decimal_kind, decimal_unscaled
from cdc.core.types.temporal import TIMESTAMPTZ


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
    f = converter(value_kind(701))
    assert math.isnan(f(b"NaN")) and f(b"Infinity") == math.inf and f(b"-Infinity") == -math.inf
    assert math.copysign(1, f(b"-0")) == -1
    assert converter(value_kind(20))(b"-9223372036854775808") == -(2 ** 63)
    assert converter(value_kind(16))(b"t") is True and converter(value_kind(16))(b"f") is False
    assert converter(value_kind(1700))(b"12.3400") == "12.3400"  # numeric travels as its text


# -- every kind's edge values, as its family lists them: text -> Avro value -> text ---------------
EVERY_KIND = KINDS + (decimal_kind(10, 2), decimal_kind(38, 0), decimal_kind(5, 5))


@pytest.mark.parametrize("kind", EVERY_KIND, ids=str)
def test_each_kind_gives_back_the_text_postgresql_printed(kind: Kind) -> None:
    """Logical kinds turn back into the same text; the others keep a value equal to it."""
    assert kind.edges, f"{kind}: its family lists no edge values"
    to_avro, to_text = converter(kind), text_converter(kind)
    for raw in kind.edges:
        value = to_avro(raw)
        if to_text is not None:
            assert to_text(value) == raw.decode(), raw
        elif isinstance(value, float):
            again = converter(kind)(repr(value).encode() if value == value else b"NaN")
            assert struct.pack("<d", again) == struct.pack("<d", value), raw
        else:
            assert value == to_avro(raw) and type(value) in (int, str, bool), raw


def test_timestamps_past_the_avro_long_travel_as_text() -> None:
    last = b"294276-12-31 23:59:59.999999+00"
    assert converter(TIMESTAMPTZ)(last) == last.decode()  # beyond 2**63-1 us from 1970
    assert isinstance(converter(TIMESTAMPTZ)(b"294246-01-01 00:00:00+00"), int)


def test_offsets_are_applied_and_numeric_text_with_other_scales_is_exact() -> None:
    assert converter(TIMESTAMPTZ)(b"1970-01-01 05:30:00+05:30") == 0
    assert converter(TIMESTAMPTZ)(b"1970-01-01 00:00:00-00:53:28") == 3208 * 10 ** 6
    assert decimal_unscaled(b"1.5", 2) == 150 and decimal_unscaled(b"12", 1) == 120
    with pytest.raises(ValueError, match="more than 1 fractional digits"):
        decimal_unscaled(b"1.25", 1)


@pytest.mark.parametrize("oid, typmod, kind", [
    (1700, (10 << 16 | 2) + 4, "decimal(10,2)"),
    (1700, -1, "string"),  # unconstrained: no fixed scale for Avro's decimal
    (1700, (2 << 16 | 0x7FE) + 4, "string"),  # numeric(2,-2): Avro has no negative scale
    (1700, (2 << 16 | 5) + 4, "string"),  # numeric(2,5): scale above precision
    (1082, -1, "date"), (1184, 3, "timestamp-micros"), (1114, -1, "local-timestamp-micros"),
    (1083, -1, "time-micros"), (1266, -1, "string"), (1186, -1, "string"),
    (2950, -1, "uuid"), (17, -1, "bytes"), (790, -1, "string"), (1007, -1, "string"),
])
def test_each_type_travels_as_its_natural_avro_kind(oid: int, typmod: int, kind: str) -> None:
    found = value_kind(oid, typmod)
    assert found.name == kind
    assert kind_of_avro_type(avro_type(found, True)) == (found, True)
    assert kind_of_avro_type(avro_type(found, False)) == (found, False)


@settings(max_examples=300)
@given(st.integers(days_from_civil(-4713, 11, 24) * DAY_US, days_from_civil(294277, 1, 1) * DAY_US - 1),
       st.booleans())
def test_timestamp_text_and_back_agree_with_the_general_parser(micros: int, utc: bool) -> None:
    text = timestamp_text(micros, utc).encode()
    assert timestamp_micros(text) == _timestamp_micros_any(text) == micros
    if -62135596800000000 <= micros < 253402300800000000:  # years 1..9999: datetime agrees
        moment = datetime(1970, 1, 1) + timedelta(microseconds=micros)
        iso = moment.isoformat(" ")
        iso = iso.rstrip("0") if "." in iso else iso
        assert text.decode() == iso + ("+00" if utc else "")


# -- float4: rounded once, as PostgreSQL's float4in (strtof) does ---------------------------------
def _strtof() -> Callable[[bytes], float]:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.strtof.restype, libc.strtof.argtypes = ctypes.c_float, [ctypes.c_char_p, ctypes.c_void_p]
    return lambda text: libc.strtof(text, None)


def _shortest_f4_text(f: float, strtof: Callable[[bytes], float]) -> bytes:
    """What PostgreSQL prints for a float4: the fewest digits that read back as it."""
    for digits in range(1, 10):
        text = b"%.*g" % (digits, f)
        if strtof(text) == f:
            return text
    raise AssertionError(f)


def test_float4_text_is_rounded_once_like_postgresql() -> None:
    strtof = _strtof()
    for text in [b"7038531e-32", b"7.038531e-26", b"82381273e-35", b"8.238127e-28",
                 b"1.17549435e-38", b"1.1754944e-38", b"1e-45", b"3.4028235e+38", b"-0"]:
        assert float4(text) == strtof(text) and str(float4(text)) == str(strtof(text)), text


@settings(max_examples=3000, deadline=None)
@given(bits=st.integers(0, 2 ** 32 - 1))
def test_float4_reads_back_every_bit_pattern(bits: int) -> None:
    f = struct.unpack("<f", struct.pack("<I", bits))[0]
    if f != f:
        assert float4(b"NaN") != float4(b"NaN")
        return
    text = b"Infinity" if f == math.inf else b"-Infinity" if f == -math.inf else \
        _shortest_f4_text(f, _strtof())
    assert struct.pack("<f", float4(text)) == struct.pack("<f", f), text
