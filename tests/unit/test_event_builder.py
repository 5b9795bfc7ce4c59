"""Change events from pgoutput messages: the hand-written Avro bytes equal a general Avro writer's."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from cdc.core.wire.avro import Codec, read_fingerprint, without_logical_types
from cdc.core.errors import DecodeError
from cdc.core.wire.model import CONTROL_KEY
from cdc.source.event_builder import SiteIdentity
from tests.collecting_builder import CollectingBuilder
from cdc.source.pgoutput import (
    UNCHANGED_TOAST, Begin, Column, Commit, Delete, Insert, Relation, Truncate, Update,
    decode_message, pg_us_to_unix_us,
)
from cdc.core.types.temporal import (DAY_US, date_text, days_from_civil, time_text, timestamp_text)
from cdc.core.types.mapping import converter, value_kind
from cdc.core.types.numeric import decimal_text

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SITE = SiteIdentity("plant-1", "7300000000000000001", 1, "tributary_plant_1", "factory")


def builder() -> tuple[CollectingBuilder, dict[int, Codec]]:
    codecs: dict[int, Codec] = {}
    b = CollectingBuilder(SITE, lookup=lambda oid, typmod: f"public.type_{oid}",
                     on_new_schema=lambda c: codecs.__setitem__(c.fingerprint, c))
    return b, codecs


def decode(codecs: dict[int, Codec], data: bytes | None) -> tuple[str, Any]:
    if data is None:
        return "tombstone", None
    codec = codecs[read_fingerprint(data)]
    return codec.kind or "key", codec.decode_body(data)


def test_recorded_pg15_stream_becomes_the_expected_events() -> None:
    b, codecs = builder()
    kinds: Counter[tuple] = Counter()
    for line in (FIXTURES / "pg15_stream.jsonl").read_text().splitlines():
        msg = decode_message(bytes.fromhex(json.loads(line)["payload"]))
        for key, value in b.handle(msg):
            kind, rec = decode(codecs, value)
            if kind == "change":
                kinds[(rec["op"], rec["source"]["table"])] += 1
                k_kind, k_rec = decode(codecs, key)
                assert (k_rec["schema"], k_rec["table"]) == (rec["source"]["schema"],
                                                            rec["source"]["table"])
                assert rec["source"]["site"] == "plant-1" and rec["source"]["db"] == "factory"
                if rec["op"] == "u" and rec["unchanged_toast"]:
                    assert all(rec["after"][f] is None for f in rec["unchanged_toast"])
                    kinds["toast"] += 1
            else:
                kinds[kind] += 1
                if kind in ("begin", "commit"):
                    assert key == CONTROL_KEY
    assert kinds["begin"] == kinds["commit"] > 0
    assert kinds["toast"] >= 1
    assert kinds["tombstone"] >= sum(n for (op, *_), n in kinds.items() if op == "d")
    assert {op for op, *_ in kinds if op in "cudt"} == {"c", "u", "d", "t"}


# -- byte equality with fastavro on random tables and rows ---------------------------------
NUMERIC_10_2 = (10 << 16 | 2) + 4
KINDS = {(16, -1): "bool", (21, -1): "int2", (23, -1): "int4", (20, -1): "int8",
         (700, -1): "float4", (701, -1): "float8", (25, -1): "text", (1700, -1): "numeric",
         (1700, NUMERIC_10_2): "numeric(10,2)", (1184, -1): "timestamptz",
         (1114, -1): "timestamp", (1082, -1): "date", (1083, -1): "time", (2950, -1): "uuid",
         (17, -1): "bytea"}
PG_DAYS = st.integers(days_from_civil(-4713, 11, 24), days_from_civil(5874897, 12, 31))
PG_MICROS = st.integers(days_from_civil(-4713, 11, 24) * DAY_US,
                        days_from_civil(294277, 1, 1) * DAY_US - 1)
TIMESTAMPTZ_TEXTS = [b"2025-01-01 00:00:00+00", b"2025-06-30 23:59:59.999999+05:30",
                     b"1900-01-01 00:00:00+00:53:28", b"0044-03-15 12:00:00+00 BC",
                     b"294276-12-31 23:59:59.999999+00", b"infinity", b"-infinity"]


def text_value(oid: int, typmod: int = -1) -> st.SearchStrategy[bytes]:
    """What pgoutput sends for a value of this type: its text output form, or one of the edge
    values its kind's family lists."""
    return _text_value(oid, typmod) | st.sampled_from(value_kind(oid, typmod).edges)


def _text_value(oid: int, typmod: int = -1) -> st.SearchStrategy[bytes]:
    if oid == 16:
        return st.sampled_from([b"t", b"f"])
    if oid == 21:
        return st.integers(-(2 ** 15), 2 ** 15 - 1).map(lambda n: str(n).encode())
    if oid == 23:
        return st.integers(-(2 ** 31), 2 ** 31 - 1).map(lambda n: str(n).encode())
    if oid == 20:
        return st.integers(-(2 ** 63), 2 ** 63 - 1).map(lambda n: str(n).encode())
    if oid in (700, 701):
        return st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"-0", b"1.5e-300", b"3.25"])
    if oid == 1700 and typmod == NUMERIC_10_2:
        return st.integers(-(10 ** 10) + 1, 10 ** 10 - 1).map(
            lambda n: decimal_text(n, 2).encode()) | st.just(b"NaN")
    if oid == 1082:
        return PG_DAYS.map(lambda d: date_text(d).encode()) | st.sampled_from(
            [b"infinity", b"-infinity"])
    if oid == 1114:
        return PG_MICROS.map(lambda us: timestamp_text(us, utc=False).encode())
    if oid == 1184:
        return PG_MICROS.map(lambda us: timestamp_text(us, utc=True).encode()) | \
            st.sampled_from(TIMESTAMPTZ_TEXTS)
    if oid == 1083:
        return st.integers(0, DAY_US).map(lambda us: time_text(us).encode())
    if oid == 2950:
        return st.uuids().map(lambda u: str(u).encode())
    if oid == 17:
        return st.binary(max_size=100).map(lambda b: b"\\x" + b.hex().encode())
    return st.text(max_size=200).map(str.encode)


@st.composite
def tables_and_rows(draw: st.DrawFn) -> tuple[Relation, list[tuple]]:
    types = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=8))
    names = [f"c{i}" if draw(st.booleans()) else f"col {i}é" for i in range(len(types))]
    columns = tuple(Column(1 if i == 0 else 0, n, oid, typmod) for i, (n, (oid, typmod)) in
                    enumerate(zip(names, types)))
    rel = Relation(16384, "public", draw(st.sampled_from(["t", "Mixed Case", "ünï"])), "d", columns)
    rows = []
    for _ in range(draw(st.integers(1, 5))):
        row = [draw(text_value(*types[0]))]
        for oid, typmod in types[1:]:
            row.append(draw(st.one_of(st.none(), text_value(oid, typmod))))
        rows.append(tuple(row))
    return rel, rows


def expected_row(rel: Relation, values: tuple, fields: list[str]) -> dict[str, Any]:
    out = {}
    for col, field, raw in zip(rel.columns, fields, values):
        out[field] = None if raw is None or raw is UNCHANGED_TOAST else \
            converter(value_kind(col.type_oid, col.type_modifier))(raw)
    return out


@settings(max_examples=200, deadline=None)
@given(tables_and_rows(), st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 62))
def test_events_are_byte_equal_to_a_general_avro_writer(
        table: tuple[Relation, list[tuple]], xid: int, lsn: int) -> None:
    rel, rows = table
    b, codecs = builder()
    b.handle(rel)
    b.handle(Begin(lsn, 800_000_000_000_000, xid))
    out = []
    for row in rows:
        out += b.handle(Insert(rel.oid, row))
    toast_row = tuple([rows[0][0]] + [UNCHANGED_TOAST] * (len(row) - 1))
    out += b.handle(Update(rel.oid, None, None, toast_row))
    out += b.handle(Delete(rel.oid, rows[0], "O"))
    out += b.handle(Truncate((rel.oid,), False, False))
    out += b.handle(Commit(0, lsn, lsn + 1, 800_000_000_000_000))
    envelope = next(c for c in codecs.values() if c.kind == "change")
    key_codec = next(c for c in codecs.values() if c.kind == "key")
    # the same bytes (logical types do not change the encoding), fed with the raw Avro values
    raw_envelope = Codec.of(without_logical_types(envelope.schema))
    key_codec = Codec.of(without_logical_types(key_codec.schema))
    fields = [f["name"] for f in envelope.schema["fields"][0]["type"][1]["fields"]]
    ts = pg_us_to_unix_us(800_000_000_000_000)
    seq = 0
    changes = [(k, v) for k, v in out if v is not None and codecs[read_fingerprint(v)] is envelope]
    specs = [("c", None, r, []) for r in rows] + \
            [("u", None, toast_row, fields[1:]), ("d", rows[0], None, []), ("t", None, None, [])]
    assert len(changes) == len(specs)
    for (key, value), (op, before, after, toast) in zip(changes, specs):
        record = {
            "before": None if before is None else expected_row(rel, before, fields),
            "after": None if after is None else expected_row(rel, after, fields),
            "op": op, "unchanged_toast": toast,
            "source": {"site": SITE.site_id, "db": SITE.database, "schema": rel.namespace,
                       "table": rel.name, "xid": xid, "commit_lsn": lsn, "seq": seq,
                       "commit_ts": ts, "snapshot": False}}
        seq += 1
        assert value == raw_envelope.encode(record)
        image = before if before is not None else after
        key_rec = {"schema": rel.namespace, "table": rel.name,
                   "key": None if image is None else
                   {fields[0]: converter(value_kind(rel.columns[0].type_oid,
                                                   rel.columns[0].type_modifier))(image[0])}}
        assert key == key_codec.encode(key_rec)


def test_key_change_is_followed_by_a_tombstone_for_the_old_key() -> None:
    b, codecs = builder()
    rel = Relation(1, "public", "t", "d", (Column(1, "id", 23, -1), Column(0, "v", 25, -1)))
    b.handle(rel)
    b.handle(Begin(100, 0, 7))
    out = b.handle(Update(1, (b"1", None), "K", (b"2", b"x")))
    assert len(out) == 2 and out[1][1] is None
    assert decode(codecs, out[1][0])[1]["key"] == {"id": 1}
    assert decode(codecs, out[0][0])[1]["key"] == {"id": 2}


def test_null_key_and_binary_values_are_refused_by_name() -> None:
    b, _ = builder()
    b.handle(Relation(1, "public", "t", "d", (Column(1, "id", 23, -1), Column(0, "v", 25, -1))))
    b.handle(Begin(100, 0, 7))
    with pytest.raises(DecodeError, match="public.t.id: key column without a value"):
        b.handle(Insert(1, (None, b"x")))
    with pytest.raises(DecodeError, match="unchanged-TOAST marker outside an update"):
        b.handle(Insert(1, (b"1", UNCHANGED_TOAST)))


def test_a_key_move_that_left_toast_unchanged_carries_the_row_read_at_the_new_key() -> None:
    """The cloud may not hold the row at its old key (a resumed copy had not reached it): the
    move goes whole, its unchanged values read from the site's row at the new key; without that
    row (deleted since) it goes as it came."""
    rel = Relation(7001, "public", "settings", "d",
                   (Column(1, "key", 25, -1), Column(0, "value", 25, -1), Column(0, "blob", 25, -1)))
    asked: list[tuple] = []
    site_rows = {b"a1": {"blob": b"the blob"}}

    def lookup(info: Any, key: dict[str, bytes], columns: list[str]) -> dict | None:
        asked.append((info.qualified, key, columns))
        return site_rows.get(key["key"])

    codecs: dict[int, Codec] = {}
    b = CollectingBuilder(SITE, lookup=lambda oid, typmod: "text",
                     on_new_schema=lambda c: codecs.__setitem__(c.fingerprint, c),
                     unchanged_lookup=lookup)
    b.handle(rel)
    b.handle(Begin(100, 0, 5))
    moved = b.handle(Update(7001, (b"k1", None, None), "K", (b"a1", b"v", UNCHANGED_TOAST)))
    gone = b.handle(Update(7001, (b"k2", None, None), "K", (b"a2", b"v", UNCHANGED_TOAST)))
    same_key = b.handle(Update(7001, None, None, (b"a1", b"w", UNCHANGED_TOAST)))
    _, rec = decode(codecs, moved[0][1])
    assert rec["after"] == {"key": "a1", "value": "v", "blob": "the blob"}
    assert rec["unchanged_toast"] == []
    _, rec = decode(codecs, gone[0][1])
    assert rec["after"]["blob"] is None and rec["unchanged_toast"] == ["blob"]
    _, rec = decode(codecs, same_key[0][1])  # not a move: the sink patches the row it holds
    assert rec["unchanged_toast"] == ["blob"]
    assert asked == [("public.settings", {"key": b"a1"}, ["blob"]),
                     ("public.settings", {"key": b"a2"}, ["blob"])]


def test_the_builder_does_no_io_each_schema_comes_out_before_its_first_use() -> None:
    """The builder returns what it needs done (publish a schema) ahead of the records that
    need it; the daemon publishes it before it produces them. No record may come out whose
    schema did not come out first, and no schema comes out twice."""
    from cdc.source.event_builder import EventBuilder, PublishSchema

    b = EventBuilder(SITE, lookup=lambda oid, typmod: f"public.type_{oid}")
    published: list[int] = []
    outputs = []
    rel = Relation(16385, "public", "devices", "d", (Column(1, "id", 23, -1),
                                                     Column(0, "name", 25, -1)))
    for msg in (rel, Begin(0x2000, 0, 7), Insert(16385, (b"1", b"a")),
                Update(16385, None, None, (b"1", b"b")), Delete(16385, (b"1", None), "K"),
                Commit(0, 0x2000, 0x2010, 0), Begin(0x3000, 0, 8), Insert(16385, (b"2", b"c")),
                Commit(0, 0x3000, 0x3010, 0)):
        outputs += b.handle(msg)
    outputs += b.position(0x4000, 0)
    for item in outputs:
        if isinstance(item, PublishSchema):
            assert item.codec.fingerprint not in published
            published.append(item.codec.fingerprint)
            continue
        key, value = item
        for data in (key, value):
            if data is not None and not data.startswith(CONTROL_KEY[:1]):
                assert read_fingerprint(data) in published, "a record before its schema"
    assert len(published) == 5  # begin, commit, position, the table's envelope and key
    assert not b.handle(Relation(16385, "public", "devices", "d", rel.columns))  # nothing due
