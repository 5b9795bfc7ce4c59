from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.core.lsn import LSN_MAX, format_lsn, parse_lsn


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0/0", 0),
        ("0/1", 1),
        ("0/ABCDEF", 0xABCDEF),
        ("16/B374D848", (0x16 << 32) | 0xB374D848),
        ("1/0", 1 << 32),
        ("FFFFFFFF/FFFFFFFF", LSN_MAX),
    ],
)
def test_format_and_parse(text, value):
    assert format_lsn(value) == text
    assert parse_lsn(text) == value


def test_parse_accepts_lower_case_and_leading_zeros():
    assert parse_lsn("16/b374d848") == parse_lsn("00000016/B374D848") == 0x16_B374D848
    assert format_lsn(parse_lsn("0/0000ABCD")) == "0/ABCD"


@pytest.mark.parametrize(
    "text",
    ["", "/", "0", "0/", "/0", "0/0/0", "G/0", "0/-1", "-1/0", "+1/0", "0x1/0", " 0/0", "0/0 ", "123456789/0",
     "0/123456789", "1_0/0", "0/ 1", "０/0"],
)
def test_parse_rejects(text):
    with pytest.raises(ValueError, match="invalid LSN"):
        parse_lsn(text)


def test_parse_rejects_non_strings():
    with pytest.raises(ValueError, match="invalid LSN"):
        parse_lsn(b"0/0")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, LSN_MAX + 1, 1.0, "0/0", None, True])
def test_format_rejects(value):
    with pytest.raises(ValueError, match="LSN must be an integer"):
        format_lsn(value)  # type: ignore[arg-type]


@settings(database=None)
@given(st.integers(0, LSN_MAX))
def test_round_trip(value):
    text = format_lsn(value)
    assert parse_lsn(text) == value
    assert parse_lsn(text.lower()) == value
    assert text == text.upper()


@settings(database=None)
@given(st.integers(0, LSN_MAX), st.integers(0, LSN_MAX))
def test_order_of_values_is_wal_order(a, b):
    # comparing the integers is comparing positions; comparing the strings would not be
    assert (parse_lsn(format_lsn(a)) < parse_lsn(format_lsn(b))) == (a < b)
