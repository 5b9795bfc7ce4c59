"""Which cloud names a site's events may reach (pure)."""

import pytest

from cdc.core.errors import ApplyError, ReservedNameError
from cdc.core.types.catalog import TypeDef
from sinks.changes import ColumnDef, TableVersion
from sinks.cloud_names import check_names, reserved_schema


def version(schema: str = "public", columns: tuple[ColumnDef, ...] = ()) -> TableVersion:
    return TableVersion(1, schema, "t", (ColumnDef("id", "id", "integer", True),) + columns)


@pytest.mark.parametrize("schema, reserved", [
    ("tributary", True), ("pg_catalog", True), ("pg_toast", True), ("pg_temp_3", True),
    ("information_schema", True), ("_timescaledb_internal", True), ("public", False),
    ("Tributary", False), ("telemetry", False), ("pgdata", False), ("ünï cødé", False),
])
def test_reserved_schemas(schema: str, reserved: bool) -> None:
    assert reserved_schema(schema) is reserved


def test_refusals_name_what_they_refuse_and_are_apply_errors() -> None:
    with pytest.raises(ReservedNameError, match="site s: site table tributary.t: its schema "
                                                "tributary is reserved"):
        check_names(version("tributary"), "public", "site_id", "s")
    with pytest.raises(ReservedNameError, match="its cloud schema pg_catalog is reserved"):
        check_names(version(), "pg_catalog", "site_id", "s")
    with pytest.raises(ReservedNameError, match="column site_id is reserved"):
        check_names(version(columns=(ColumnDef("site_id", "site_id", "text", False),)),
                    "public", "site_id", "s")
    mood = TypeDef("information_schema", "mood", "enum", labels=("a",))
    with pytest.raises(ApplyError, match="type information_schema.mood in reserved schema"):
        check_names(version(columns=(ColumnDef("m", "m", "information_schema.mood", False,
                                               defs=(mood,)),)), "public", "site_id", "s")
    check_names(version(columns=(ColumnDef("Site_ID", "Site_ID", "text", False),)),
                "public", "site_id", "s")  # another name: allowed
