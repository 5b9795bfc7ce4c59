"""Types that are not built in, described from a (recorded) catalog."""

from __future__ import annotations

import pytest

from cdc.core.errors import TypeMappingError
from cdc.core.types.catalog import TypeDef, TypeRow, describe
from cdc.core.types.mapping import column_type

NUMERIC_10_2 = (10 << 16 | 2) + 4


class FakeCatalog:
    """pg_type rows of a small site: domains, an enum, a composite, a range, an extension type."""

    TYPES = {
        90001: TypeRow("d", "kinds", "price", "kinds.price", base_oid=1700, base_typmod=NUMERIC_10_2),
        90002: TypeRow("d", "kinds", "dearer", "kinds.dearer", base_oid=90001, base_typmod=-1),
        90003: TypeRow("e", "kinds", "mood", "kinds.mood"),
        90004: TypeRow("b", "kinds", "_mood", "kinds.mood[]", element_oid=90003, is_array=True),
        90005: TypeRow("c", "kinds", "Address", 'kinds."Address"', relation_oid=90100),
        90006: TypeRow("r", "kinds", "floatrange", "kinds.floatrange"),
        90007: TypeRow("b", "public", "hstore", "hstore", extension="hstore"),
        90008: TypeRow("p", "pg_catalog", "anyelement", "anyelement"),
    }

    def type_row(self, oid: int, typmod: int) -> TypeRow | None:
        return self.TYPES.get(oid)

    def enum_labels(self, oid: int) -> list[str]:
        return ["sad", "ok"]

    def attributes(self, relation_oid: int) -> list[tuple[str, int, int]]:
        return [("street", 25, -1), ("mood", 90003, -1), ("price", 90002, -1)]

    def range_subtype(self, oid: int) -> tuple[int, int]:
        return 701, -1

    def multirange_range(self, oid: int) -> int:
        return 90006


MOOD = TypeDef("kinds", "mood", "enum", labels=("sad", "ok"))


def test_domains_travel_as_their_base_type_and_kind() -> None:
    t = describe(90002, -1, FakeCatalog())
    assert (t.sql, t.kind.name, t.domain) == ("numeric(10,2)", "decimal(10,2)", "kinds.dearer")


def test_enums_composites_and_ranges_carry_their_definitions_in_dependency_order() -> None:
    cat = FakeCatalog()
    assert describe(90003, -1, cat).defs == (MOOD,)
    arr = describe(90004, -1, cat)
    assert (arr.sql, arr.kind.name, arr.defs) == ("kinds.mood[]", "string", (MOOD,))
    comp = describe(90005, -1, cat)
    assert comp.sql == 'kinds."Address"'
    assert comp.defs == (MOOD, TypeDef("kinds", "Address", "composite", attributes=(
        ("street", "text"), ("mood", "kinds.mood"), ("price", "numeric(10,2)"))))
    assert describe(90006, -1, cat).defs == (TypeDef("kinds", "floatrange", "range",
                                                     subtype="double precision"),)


def test_extension_types_name_their_extension_and_pseudo_types_are_refused_by_column() -> None:
    h = describe(90007, -1, FakeCatalog())
    assert (h.sql, h.kind.name, h.extension, h.defs) == ("hstore", "string", "hstore", ())
    cat = FakeCatalog()
    with pytest.raises(TypeMappingError, match="public.t.c: anyelement is a pseudo-type"):
        column_type(90008, -1, lambda oid, typmod: describe(oid, typmod, cat), "public.t.c")
    with pytest.raises(TypeMappingError, match="public.t.c: cannot name type OID 99999"):
        column_type(99999, -1, lambda oid, typmod: describe(oid, typmod, cat), "public.t.c")


def test_type_definitions_survive_the_schema_json() -> None:
    comp = describe(90005, -1, FakeCatalog()).defs
    assert tuple(TypeDef.from_json(d.to_json()) for d in comp) == comp
