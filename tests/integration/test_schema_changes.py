"""Schema changes at a site while it streams: the cloud table follows, or the sink stops by name."""

from __future__ import annotations

from typing import Callable

import psycopg
import pytest

from devenv.pipeline import execute, rows_of, wait_until
from tests.integration.sites import SEED, TIMEOUT, Pipeline

AFTER = ["UPDATE devices SET id = id + 1000 WHERE id < 5",
         "INSERT INTO devices (id, name) VALUES (77, 'x')"]


@pytest.mark.parametrize("ddl, columns, cloud_type", [
    ("ALTER TABLE devices ADD COLUMN serial text", ["id", "name", "serial"], ("serial", "text")),
    ("ALTER TABLE devices DROP COLUMN firmware", ["id", "name"], None),
    ("ALTER TABLE devices ALTER COLUMN id TYPE bigint", ["id", "name"], ("id", "bigint")),
    ("ALTER TABLE devices ALTER COLUMN firmware TYPE varchar(40);"
     " ALTER TABLE devices ALTER COLUMN firmware TYPE varchar(80)", ["id", "firmware"],
     ("firmware", "text")),  # the cloud's text already holds any varchar
    ("ALTER TABLE devices RENAME COLUMN firmware TO fw", ["id", "name", "fw"], ("fw", "text")),
    # older rows read the default at the site: the cloud's older rows of the site get it too
    ("ALTER TABLE devices ADD COLUMN region text DEFAULT 'eu'", ["id", "name", "region"],
     ("region", "text")),
    ("ALTER TABLE devices DROP COLUMN firmware; ALTER TABLE devices ADD COLUMN firmware text"
     " DEFAULT 'new'", ["id", "firmware"], ("firmware", "text")),
    ("ALTER TABLE devices ADD COLUMN price numeric(6,2) DEFAULT 1.5;"
     " UPDATE devices SET price = 2.25 WHERE id = 7;"
     " ALTER TABLE devices ALTER COLUMN price TYPE numeric(10,2)", ["id", "price"],
     ("price", "numeric(10,2)")),
])
def test_cloud_table_follows(pipeline_factory: Callable[..., Pipeline], ddl: str,
                             columns: list[str], cloud_type: tuple[str, str] | None) -> None:
    p = pipeline_factory(sites=("a",)).start()
    a = p.site_dsn["a"]
    execute(a, SEED[0])
    p.sync("a")
    execute(a, *ddl.split(";"), *AFTER)
    p.sync("a")
    assert rows_of(p.cloud_dsn, "public.devices", columns, where_site="a") == \
        rows_of(a, "public.devices", columns)
    if cloud_type is not None:
        with psycopg.connect(p.cloud_dsn) as conn:
            got = conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid ="
                " 'public.devices'::regclass AND attname = %s", (cloud_type[0],)).fetchone()
        assert got == (cloud_type[1],)
    p.stop()


def test_incompatible_type_change_stops_that_site_and_the_others_flow(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a", "b")).start()
    a, b = p.site_dsn["a"], p.site_dsn["b"]
    execute(a, SEED[0])
    execute(b, SEED[0])
    p.sync("a")
    p.sync("b")
    before = rows_of(b, "public.devices", ["id", "name", "firmware"])
    execute(b, "ALTER TABLE devices ALTER COLUMN firmware TYPE integer USING 1", *AFTER)
    wait_until(lambda: "site b stopped" in p.sink.log(), TIMEOUT, "the sink to stop site b",
               p.daemons)
    log = p.sink.log()
    assert "column firmware is text" in log and "the site's integer" in log, log
    execute(a, *AFTER)  # site a keeps flowing
    p.sync("a")
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "name", "firmware"], where_site="a") == \
        rows_of(a, "public.devices", ["id", "name", "firmware"])
    # nothing of site b after the refused change was applied, nothing before it was lost
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "name", "firmware"], where_site="b") == before
    p.stop()


def test_a_rename_at_one_site_renames_the_cloud_column_and_the_other_sites_follow_it(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a", "b")).start()
    a, b = p.site_dsn["a"], p.site_dsn["b"]
    for site in ("a", "b"):
        execute(p.site_dsn[site], SEED[0])
        p.sync(site)
    execute(a, "ALTER TABLE devices RENAME COLUMN firmware TO fw",
            "UPDATE devices SET fw = 'v2' WHERE id <= 3")
    p.sync("a")
    execute(b, "UPDATE devices SET firmware = 'b2' WHERE id >= 18",
            "INSERT INTO devices (id, name, firmware) VALUES (99, 'late', 'b3')")
    p.sync("b")
    with psycopg.connect(p.cloud_dsn) as conn:
        cols = {r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'public.devices'::regclass"
            " AND attnum > 0 AND NOT attisdropped").fetchall()}
    assert "fw" in cols and "firmware" not in cols
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "fw"], where_site="a") == \
        rows_of(a, "public.devices", ["id", "fw"])
    # site b still calls it firmware: its values land in the renamed column
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "fw"], where_site="b") == \
        rows_of(b, "public.devices", ["id", "firmware"])
    p.stop()
