"""Enum values the schema does not know are found, in plain and array columns."""

from __future__ import annotations

from cdc.source.enum_labels import EnumCheck, array_elements, unknown_label


def test_array_elements_reads_quotes_escapes_nulls_and_bounds() -> None:
    assert list(array_elements(b'{sad,"happy \'q\'",NULL,"a\\"b","NULL"}')) == [
        b"sad", b"happy 'q'", b'a"b', b"NULL"]
    assert list(array_elements(b"[0:1]={{a,b},{c,NULL}}")) == [b"a", b"b", b"c"]
    assert list(array_elements(b"{}")) == []


def test_unknown_label_names_the_first_value_outside_the_labels() -> None:
    checks = (EnumCheck(1, frozenset({b"sad", b"ok"}), False),
              EnumCheck(2, frozenset({b"sad", b"ok"}), True))
    assert unknown_label(checks, (b"1", b"ok", b"{sad,NULL}")) is None
    assert unknown_label(checks, (b"1", None, b'{sad,"meh"}')) == b"meh"
    assert unknown_label(checks, (b"1", b"meh", None)) == b"meh"
    assert unknown_label(checks, None) is None
