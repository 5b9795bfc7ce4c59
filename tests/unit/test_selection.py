"""Only the tables ``site.tables`` selects leave the site, whatever the publication carries."""

from __future__ import annotations

from cdc.source.pgoutput import Begin, Column, Delete, Insert, Relation, Truncate, Update
from cdc.source.selection import TableSelection


def relation(oid: int, schema: str, name: str) -> Relation:
    return Relation(oid, schema, name, "d", (Column(1, "id", 23, -1),))


def public_only(name: str) -> bool:
    return name.startswith("public.")


def test_changes_of_tables_not_selected_stop_at_the_site() -> None:
    select = TableSelection(public_only)
    devices, secret = relation(1, "public", "devices"), relation(2, "other", "secret")
    stream = [Begin(0, 0, 1), devices, secret, Insert(1, (b"1",)), Insert(2, (b"1",)),
              Update(2, None, None, (b"2",)), Delete(2, "K", (b"1",)), Update(1, None, None, (b"2",))]
    passed = [m for m in stream if select(m) is not None]
    assert passed == [Begin(0, 0, 1), devices, Insert(1, (b"1",)), Update(1, None, None, (b"2",))]
    assert select.left_out_changes == 3 and select.oids() == {2}


def test_the_sites_bookkeeping_and_catalogs_never_leave_whatever_the_patterns() -> None:
    select = TableSelection(lambda name: True)
    for schema in ("tributary", "information_schema", "pg_temp_3", "_timescaledb_internal",
                   "timescaledb_information"):
        assert select(relation(7, schema, "t")) is None
        assert select(Insert(7, (b"1",))) is None
    assert select(relation(8, "public", "t")) is not None


def test_a_truncate_keeps_only_the_selected_tables() -> None:
    select = TableSelection(public_only)
    select(relation(1, "public", "a"))
    select(relation(2, "other", "b"))
    assert select(Truncate((1, 2), False, False)) == Truncate((1,), False, False)
    assert select(Truncate((2,), True, False)) is None
    assert select(Truncate((1,), False, True)) == Truncate((1,), False, True)


def test_a_table_renamed_into_the_selection_flows_and_a_dropped_one_is_forgotten() -> None:
    select = TableSelection(public_only)
    select(relation(2, "other", "b"))
    assert select(Insert(2, (b"1",))) is None
    assert select(relation(2, "public", "b")) is not None  # ALTER TABLE ... SET SCHEMA public
    assert select(Insert(2, (b"1",))) == Insert(2, (b"1",))
    select(relation(3, "other", "c"))
    select.forget({3})
    assert select.oids() == set()
