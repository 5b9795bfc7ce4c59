"""The fault checker's comparison: multisets, so equal rows count once each."""

from __future__ import annotations

from devenv.fault_check import TableCounts, multiset_diff, report


def test_equal_rows_are_counted_each_time() -> None:
    site = [("1", "on"), ("1", "on"), ("1", "on"), ("2", "off")]
    assert multiset_diff(site, site) == (0, 0)
    assert multiset_diff(site, [("1", "on"), ("2", "off")]) == (2, 0)  # a set would see 0
    assert multiset_diff(site, site + [("2", "off")]) == (0, 1)
    assert multiset_diff(site, [("1", "on")] * 3 + [("2", "of")]) == (1, 1)  # a changed value


def test_the_report_marks_what_is_not_ok_and_what_cannot_be_seen() -> None:
    good = TableCounts("a", "public.devices", 3, 3, 0, 0, None, None)
    bad = TableCounts("a", "public.versioned", 3, 3, 0, 0, 2, 0)
    assert good.ok and not bad.ok
    lines = report([good, bad]).splitlines()
    assert lines[1].split()[-2:] == ["-", "-"]
    assert lines[2].endswith("<-- NOT OK") and " 2 " in lines[2]
