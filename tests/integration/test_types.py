"""Every built-in PostgreSQL type arrives intact: site value -> event -> cloud value, edge values
and NULLs included, and the cloud column has the site's exact type."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Callable

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from psycopg import sql

from cdc.runtime.pgsession import pinned_conninfo
from cdc.core.types.temporal import DAY_US, date_text, days_from_civil, time_text, timestamp_text
from devenv.pipeline import execute, wait_until
from tests.integration.sites import TIMEOUT, Pipeline

# column, type, edge values as text the type's input function reads (None: NULL)
TYPES: list[tuple[str, str, list[str | None]]] = [
    ("b", "boolean", ["t", "f"]),
    ("i2", "smallint", ["32767", "-32768", "0"]),
    ("i4", "integer", ["2147483647", "-2147483648"]),
    ("i8", "bigint", ["9223372036854775807", "-9223372036854775808"]),
    ("f4", "real", ["NaN", "Infinity", "-Infinity", "-0", "3.4028235e+38", "1e-45", "0.1"]),
    ("f8", "double precision", ["NaN", "Infinity", "-Infinity", "-0", "1.7976931348623157e+308",
                                "5e-324", "0.1"]),
    ("n", "numeric(12,4)", ["NaN", "99999999.9999", "-99999999.9999", "0", "0.0001"]),
    ("nu", "numeric", ["NaN", "Infinity", "-Infinity", "1e-1000", "-" + "9" * 1000 + ".5",
                       "0.000", "123.4500"]),
    ("nneg", "numeric(4,-2)", ["999900", "-100", "NaN"]),
    ("nbig", "numeric(5,7)", ["0.0099999", "-0.0000001"]),
    ("m", "money", ["-92233720368547758.08", "92233720368547758.07", "0", "12.34"]),
    ("t", "text", ["", "tab\there", "line\nbreak\r\n", "back\\slash \\N", "é中😀\U00020000"
                   "\U00030000\U000E0001\U000F0000\U00100000\U0010FFFF", "'quoted' \"twice\""]),
    ("vc", "character varying(10)", ["", "0123456789", "ünïcødé!!!"]),
    ("ch", "character(5)", ["a", "abcde", ""]),
    ("nm", "name", ["x" * 63, "Mixed Case"]),
    ("c1", '"char"', ["a", "\\", " "]),
    ("by", "bytea", ["\\x", "\\x00ff5c0a09", "\\x" + "5c" * 3000]),
    ("u", "uuid", ["00000000-0000-0000-0000-000000000000", "ffffffff-ffff-ffff-ffff-ffffffffffff"]),
    ("j", "json", ['{"b": 1,  "a": [1, 2.50, "x"],   "b": 2}', "null", '"\\u00e9\\t"', "[]"]),
    ("jb", "jsonb", ['{"b": 1, "a": [1, 2.50, {"z": null}]}', '"\\u00e9 \\ud83d\\ude00"', "{}"]),
    ("x", "xml", ["<a b=\"1\">text &amp; more</a>", "plain text", "<?xml version=\"1.0\"?><r/>"]),
    ("d", "date", ["infinity", "-infinity", "4714-11-24 BC", "0001-12-31 BC", "0001-01-01",
                   "5874897-12-31", "2024-02-29", "1970-01-01"]),
    ("tm", "time without time zone", ["00:00:00", "24:00:00", "23:59:59.999999"]),
    ("tm3", "time(3) without time zone", ["12:34:56.789"]),
    ("ttz", "time with time zone", ["00:00:00+15:59", "24:00:00-15:59", "12:00:00.5+05:45",
                                    "23:59:59.999999-00:00:01"]),
    ("ts", "timestamp without time zone", ["infinity", "-infinity", "4714-11-24 00:00:00 BC",
                                           "294276-12-31 23:59:59.999999", "2024-02-29 12:00",
                                           "0044-03-15 12:00:00.000001 BC"]),
    ("tstz", "timestamp with time zone", ["infinity", "-infinity", "4714-11-24 00:00:00+00 BC",
                                          "294276-12-31 23:59:59.999999+00",
                                          "2024-02-29 12:00:00.5+05:30",
                                          "1900-01-01 00:00:00+00:53:28", "2000-01-01 00:00-15:59"]),
    ("ts0", "timestamp(0) with time zone", ["2024-01-01 00:00:00+00"]),
    ("iv", "interval", ["-178000000 years", "178000000 years", "1 year 2 mons -3 days +04:05:06.789",
                        "-00:00:00.000001", "1 day -1 second"]),
    ("ivd", "interval day to second(2)", ["1 day 02:03:04.56"]),
    ("ip", "inet", ["192.168.0.1/24", "::1", "2001:db8::ff00:42:8329/64", "0.0.0.0/0"]),
    ("cidr", "cidr", ["10.0.0.0/8", "2001:db8::/32"]),
    ("mac", "macaddr", ["08:00:2b:01:02:03", "ff:ff:ff:ff:ff:ff"]),
    ("mac8", "macaddr8", ["08:00:2b:01:02:03:04:05"]),
    ("bt", "bit(8)", ["00000000", "10101010"]),
    ("vb", "bit varying", ["", "1", "1" * 200]),
    ("tsv", "tsvector", ["'a':1A 'fat':2B,4C 'cat':5D", "", "'it''s' 'tab\\there'"]),
    ("o", "oid", ["0", "4294967295"]),
    ("lsn", "pg_lsn", ["0/0", "FFFFFFFF/FFFFFFFF", "16/B374D848"]),
    ("pt", "point", ["(1.5,-2)", "(NaN,Infinity)"]),
    ("ia", "integer[]", ["{}", "{1,NULL,3}", "{{1,2},{3,4}}", "[0:2]={7,8,9}",
                         "[-5:-4][1:1]={{1},{NULL}}"]),
    ("ta", "text[]", ['{"a b","",NULL,"NULL","q\\"uote","back\\\\slash"}', "{é,😀}"]),
    ("na", "numeric(6,2)[]", ["{1.50,NaN,-9999.99}"]),
    ("da", "date[]", ["{infinity,2024-02-29,\"0044-03-15 BC\"}"]),
    ("tsa", "timestamp with time zone[]", ['{"2024-01-01 00:00:00+00",-infinity}']),
    ("r4", "int4range", ["empty", "[1,10)", "(,5]", "(,)"]),
    ("rts", "tstzrange", ["[2024-01-01 00:00:00+00,infinity)", "empty"]),
    ("rnum", "numrange", ["(1.5,2.25]"]),
    ("mr", "nummultirange", ["{}", "{[1,2),[3,4)}"]),
    ("dmr", "datemultirange", ["{[2024-01-01,2024-02-01),[2025-01-01,)}"]),
]
COLUMNS = [name for name, _, _ in TYPES]
DDL = "CREATE TABLE zoo (id int PRIMARY KEY, " + ", ".join(
    f"{name} {sql_type}" for name, sql_type, _ in TYPES) + ")"


def edge_rows() -> list[dict[str, str | None]]:
    """Row 1 all NULL, then row k holds each column's k-th edge value (its first when fewer)."""
    rows: list[dict[str, str | None]] = [{name: None for name in COLUMNS}]
    depth = max(len(values) for _, _, values in TYPES)
    for k in range(depth):
        rows.append({name: values[k % len(values)] for name, _, values in TYPES})
    return rows


def insert(dsn: str, rows: list[dict[str, str | None]], first_id: int) -> None:
    """Insert rows given as text, each value cast by the column's type at the site."""
    casts = sql.SQL(", ").join(
        sql.SQL("%s::{}").format(sql.SQL(sql_type)) for _, sql_type, _ in TYPES)
    names = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    query = sql.SQL("INSERT INTO zoo (id, {}) VALUES (%s, {})").format(names, casts)
    with psycopg.connect(pinned_conninfo(dsn), autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(query, [(first_id + i, *[row[c] for c in COLUMNS])
                                    for i, row in enumerate(rows)])


def text_rows(dsn: str, where_site: str | None = None) -> list[tuple]:
    """Every zoo row as its types' output functions print it, with the same pinned settings on
    either side. (``format('%s')`` calls the output function; ``::text`` would not for xml, whose
    stored text may keep a version-1.0 declaration that xml's output drops: that output is what
    any logical replication in text form carries.)"""
    cols = sql.SQL(", ").join(
        sql.SQL("CASE WHEN {c} IS NULL THEN NULL ELSE format('%s', {c}) END").format(
            c=sql.Identifier(c)) for c in COLUMNS)
    query = sql.SQL("SELECT id, {} FROM public.zoo").format(cols)
    if where_site is not None:
        query += sql.SQL(" WHERE site_id = {}").format(sql.Literal(where_site))
    with psycopg.connect(pinned_conninfo(dsn)) as conn:
        return conn.execute(query + sql.SQL(" ORDER BY id")).fetchall()


def column_types(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'public.zoo'::regclass AND attnum > 0 AND NOT attisdropped"
        ).fetchall())


def assert_cloud_equals_site(p: Pipeline) -> None:
    site, cloud = text_rows(p.site_dsn["a"]), text_rows(p.cloud_dsn, "a")
    assert len(cloud) == len(site)
    for s_row, c_row in zip(site, cloud):
        for name, s_val, c_val in zip(["id", *COLUMNS], s_row, c_row):
            assert c_val == s_val, f"row {s_row[0]} column {name}: site {s_val!r}, cloud {c_val!r}"


@pytest.fixture
def zoo(pipeline_factory: Callable[..., Pipeline]) -> Pipeline:
    p = pipeline_factory(sites=("a",))
    execute(p.site_dsn["a"], DDL)
    return p.start()


def test_edge_values_of_every_builtin_type_arrive_intact(zoo: Pipeline) -> None:
    rows = edge_rows()
    insert(zoo.site_dsn["a"], rows, 1)
    # updates and deletes carry the same values as before-images and keys
    execute(zoo.site_dsn["a"], "UPDATE zoo SET id = id + 1000 WHERE id % 2 = 0",
            "DELETE FROM zoo WHERE id = 3")
    zoo.sync("a")
    assert_cloud_equals_site(zoo)
    site_types, cloud_types = column_types(zoo.site_dsn["a"]), column_types(zoo.cloud_dsn)
    assert {c: cloud_types[c] for c in COLUMNS} == {c: site_types[c] for c in COLUMNS}
    zoo.stop()


# -- generated rows: hypothesis draws values over the whole range of each type ---------------
def _text(alphabet: st.SearchStrategy[str] = st.characters(
        blacklist_categories=("Cs",), blacklist_characters="\x00")) -> st.SearchStrategy[str]:
    return st.text(alphabet, max_size=40)


PG_DAYS = st.integers(days_from_civil(-4713, 11, 24), days_from_civil(5874897, 12, 31))
PG_MICROS = st.integers(days_from_civil(-4713, 11, 24) * DAY_US,
                        days_from_civil(294277, 1, 1) * DAY_US - 1)
# local times a day inside the range, so that no offset takes them out of it
LOCAL_MICROS = st.integers(days_from_civil(-4713, 11, 25) * DAY_US,
                           days_from_civil(294276, 12, 31) * DAY_US - 1)
OFFSETS = st.integers(-(15 * 3600 + 59 * 60 + 59), 15 * 3600 + 59 * 60 + 59).map(
    lambda s: f"{'-' if s < 0 else '+'}{abs(s) // 3600:02d}:{abs(s) // 60 % 60:02d}:{abs(s) % 60:02d}")
GENERATED: dict[str, st.SearchStrategy[str]] = {
    "b": st.sampled_from(["t", "f"]),
    "i2": st.integers(-(2 ** 15), 2 ** 15 - 1).map(str),
    "i4": st.integers(-(2 ** 31), 2 ** 31 - 1).map(str),
    "i8": st.integers(-(2 ** 63), 2 ** 63 - 1).map(str),
    "f4": st.floats(width=32).map(repr).map(lambda r: r.replace("inf", "Infinity").replace("nan", "NaN")),
    "f8": st.floats().map(repr).map(lambda r: r.replace("inf", "Infinity").replace("nan", "NaN")),
    "n": st.decimals(min_value=-10 ** 8 + 1, max_value=10 ** 8 - 1, places=4,
                     allow_nan=False).map(str),
    "nu": st.decimals(min_value=Decimal("-1e30"), max_value=Decimal("1e30")).map(str) | st.just(
        "NaN"),
    "t": _text(),
    "by": st.binary(max_size=40).map(lambda b: "\\x" + b.hex()),
    "u": st.uuids().map(str),
    "jb": st.recursive(st.none() | st.booleans() | st.integers() | _text(),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                           _text(), inner, max_size=3), max_leaves=6).map(json.dumps),
    "d": PG_DAYS.map(date_text),
    "tm": st.integers(0, DAY_US).map(time_text),
    "ttz": st.tuples(st.integers(0, DAY_US).map(time_text), OFFSETS).map("".join),
    "ts": PG_MICROS.map(lambda us: timestamp_text(us, utc=False)),
    "tstz": st.tuples(LOCAL_MICROS.map(lambda us: timestamp_text(us, utc=False)), OFFSETS).map(
        lambda p: p[0].replace(" BC", "") + p[1] + (" BC" if p[0].endswith(" BC") else "")),
    "ia": st.lists(st.one_of(st.none(), st.integers(-(2 ** 31), 2 ** 31 - 1)), max_size=5).map(
        lambda xs: "{" + ",".join("NULL" if x is None else str(x) for x in xs) + "}"),
    "ta": st.lists(st.none() | _text(), max_size=4).map(
        lambda xs: "{" + ",".join("NULL" if x is None else '"' + x.replace("\\", "\\\\")
                                  .replace('"', '\\"') + '"' for x in xs) + "}"),
    "iv": st.tuples(st.integers(-10 ** 6, 10 ** 6), st.integers(-11, 11), st.integers(-10 ** 5, 10 ** 5),
                    st.integers(-(10 ** 12), 10 ** 12)).map(
        lambda t: f"{t[0]} years {t[1]} mons {t[2]} days {t[3]} microseconds"),
    "ip": st.ip_addresses().map(str),
    "vb": st.text("01", max_size=70),
    "ch": _text(st.characters(min_codepoint=32, max_codepoint=0x10FFFF, blacklist_categories=(
        "Cs",))).map(lambda x: x[:5]),
}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(rows=st.lists(st.fixed_dictionaries(
    {name: st.none() | strategy for name, strategy in GENERATED.items()}), min_size=1, max_size=60))
def test_generated_values_round_trip_through_real_servers(zoo: Pipeline,
                                                          rows: list[dict[str, str | None]]) -> None:
    dsn = zoo.site_dsn["a"]
    with psycopg.connect(dsn) as conn:
        first = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM zoo").fetchone()[0]
    insert(dsn, [{c: row.get(c) for c in COLUMNS} for row in rows], first)
    zoo.sync("a")
    assert_cloud_equals_site(zoo)


# -- types that are not built in ---------------------------------------------------------------
USER_TYPES = [
    "CREATE EXTENSION hstore",
    "CREATE SCHEMA kinds",
    "CREATE TYPE kinds.mood AS ENUM ('sad', 'ok', 'happy ''quoted''')",
    "CREATE DOMAIN kinds.price AS numeric(10,2) CHECK (VALUE >= 0)",
    "CREATE DOMAIN kinds.code AS varchar(8)",
    'CREATE TYPE kinds."Address" AS (street text, zip kinds.code, mood kinds.mood)',
    "CREATE TYPE kinds.floatrange AS RANGE (subtype = float8)",
    "CREATE TABLE gallery (id kinds.code PRIMARY KEY, m kinds.mood, ms kinds.mood[],"
    ' p kinds.price, a kinds."Address", r kinds.floatrange, h hstore, ps kinds.price[],'
    ' aa kinds."Address"[])',
]
GALLERY = ["m", "ms", "p", "a", "r", "h", "ps", "aa"]
GALLERY_ROWS = [
    "INSERT INTO gallery VALUES ('a1', 'sad', '{ok,happy ''quoted'',NULL}', 12.50,"
    " ROW('Main St 1', 'Z-1', 'ok'), '[1.5,2.5)', 'a=>1, \"b c\"=>NULL', '{1.00,2.50}',"
    " ARRAY[ROW('x, \"y\"', NULL, 'sad')::kinds.\"Address\", NULL])",
    "INSERT INTO gallery VALUES ('a2', NULL, '{}', 0, ROW(NULL, NULL, NULL), 'empty', '', NULL,"
    " '{}')",
    "INSERT INTO gallery (id) VALUES ('a3')",
]


def gallery_rows(dsn: str, where_site: str | None = None) -> list[tuple]:
    cols = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in GALLERY)
    query = sql.SQL("SELECT id::text, {} FROM public.gallery").format(cols)
    if where_site is not None:
        query += sql.SQL(" WHERE site_id = {}").format(sql.Literal(where_site))
    with psycopg.connect(pinned_conninfo(dsn)) as conn:
        return conn.execute(query + sql.SQL(" ORDER BY 1")).fetchall()


def test_enums_domains_composites_ranges_and_extension_types_arrive_intact(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",))
    a = p.site_dsn["a"]
    execute(a, *USER_TYPES)
    execute(p.cloud_dsn, "CREATE EXTENSION hstore")
    p.start()
    execute(a, *GALLERY_ROWS, "UPDATE gallery SET m = 'ok' WHERE id = 'a1'",
            "DELETE FROM gallery WHERE id = 'a3'")
    p.sync("a")
    assert gallery_rows(p.cloud_dsn, "a") == gallery_rows(a)
    cloud = column_types_of(p.cloud_dsn, "gallery")
    # enums, composites and ranges are created in the cloud; domains arrive as their base type
    assert {c: cloud[c] for c in ["id", *GALLERY]} == {
        "id": "character varying(8)", "m": "kinds.mood", "ms": "kinds.mood[]",
        "p": "numeric(10,2)", "a": 'kinds."Address"', "r": "kinds.floatrange",
        "h": "hstore", "ps": "numeric(10,2)[]", "aa": 'kinds."Address"[]'}
    # a label added at the site later reaches the cloud's enum, in the site's order
    execute(a, "ALTER TYPE kinds.mood ADD VALUE 'meh' AFTER 'sad'",
            "INSERT INTO gallery (id, m) VALUES ('a4', 'meh')")
    p.sync("a")
    assert gallery_rows(p.cloud_dsn, "a") == gallery_rows(a)
    with psycopg.connect(p.cloud_dsn) as conn:
        labels = conn.execute("SELECT enum_range(NULL::kinds.mood)::text").fetchone()
    assert labels == ("{sad,meh,ok,\"happy 'quoted'\"}",)
    p.stop()


def test_a_type_the_cloud_lacks_stops_the_site_naming_table_column_and_extension(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",))
    a = p.site_dsn["a"]
    execute(a, "CREATE EXTENSION hstore", "CREATE TABLE kv (id int PRIMARY KEY, h hstore)")
    p.start()
    execute(a, "INSERT INTO kv VALUES (1, 'a=>1')")
    wait_until(lambda: "site a stopped" in p.sink.log(), TIMEOUT, "the sink to stop site a",
               p.daemons)
    assert "public.kv" in p.sink.log() and "column h has type hstore from the site's extension" \
        " hstore" in p.sink.log() and "CREATE EXTENSION hstore in the cloud" in p.sink.log()
    p.stop()


def column_types_of(dsn: str, table: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (f"public.{table}",)).fetchall())


POSTGIS = Path("/usr/share/postgresql/15/extension/postgis.control")


@pytest.mark.skipif(not POSTGIS.is_file(), reason="PostGIS is not installed (scripts/install-deps"
                    " installs it as root: apt-get install postgresql-15-postgis-3)")
def test_postgis_geometries_arrive_bit_for_bit(pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",))
    a = p.site_dsn["a"]
    execute(a, "CREATE EXTENSION postgis",
            "CREATE TABLE shapes (id int PRIMARY KEY, pt geometry(Point,4326), g geometry,"
            " geo geography(Polygon,4326))")
    execute(p.cloud_dsn, "CREATE EXTENSION postgis")
    p.start()
    execute(a, "INSERT INTO shapes VALUES"
            " (1, 'SRID=4326;POINT(8.5417 47.3769)', 'LINESTRING(0 0, 1 1, 2 0.5)',"
            "  'SRID=4326;POLYGON((0 0, 0 1, 1 1, 1 0, 0 0))'),"
            " (2, NULL, 'GEOMETRYCOLLECTION EMPTY', NULL),"
            " (3, 'SRID=4326;POINT(-180 -90)', 'POLYGON Z((0 0 1, 0 1 2, 1 1 3, 0 0 1))', NULL)",
            "UPDATE shapes SET g = ST_Buffer(g, 0.5) WHERE id = 1")
    p.sync("a")
    query = ("SELECT id, pt::text, g::text, geo::text FROM public.shapes {} ORDER BY id")
    with psycopg.connect(a) as conn:
        site = conn.execute(query.format("")).fetchall()
    with psycopg.connect(p.cloud_dsn) as conn:
        cloud = conn.execute(query.format("WHERE site_id = 'a'")).fetchall()
        types = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE"
                             " attrelid = 'public.shapes'::regclass AND attname IN ('pt', 'geo')"
                             " ORDER BY attname").fetchall()
    assert cloud == site  # hex EWKB: the same bytes
    assert types == [("geography(Polygon,4326)",), ("geometry(Point,4326)",)]
    p.stop()
