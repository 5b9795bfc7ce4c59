"""Which cloud column types hold which site types (pure): decides add, keep, widen or refuse."""

import pytest

from cdc.core.types.mapping import can_hold


@pytest.mark.parametrize("cloud, site", [
    ("integer", "smallint"), ("bigint", "integer"), ("text", "character varying(10)"),
    ("character varying(20)", "character varying(10)"), ("character varying", "character varying(5)"),
    ("numeric", "numeric(10,2)"), ("numeric(12,2)", "numeric(10,2)"), ("numeric(12,4)", "numeric(10,2)"),
    ("timestamp with time zone", "timestamp(3) with time zone"), ("uuid", "uuid"),
])
def test_holds(cloud: str, site: str) -> None:
    assert can_hold(cloud, site)


@pytest.mark.parametrize("cloud, site", [
    ("integer", "bigint"), ("character varying(10)", "text"), ("character varying(5)", "character varying(10)"),
    ("numeric(10,2)", "numeric"), ("numeric(10,2)", "numeric(10,3)"), ("numeric(10,2)", "numeric(12,2)"),
    ("real", "double precision"), ("double precision", "real"), ("integer", "text"), ("text", "integer"),
])
def test_does_not_hold(cloud: str, site: str) -> None:
    assert not can_hold(cloud, site)
