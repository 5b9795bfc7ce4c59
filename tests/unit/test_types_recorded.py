"""Edge values of every built-in type, recorded from a real PostgreSQL 15 walsender (with the
pinned session settings): pgoutput text -> Avro event -> the text the sink gives the cloud's
COPY is the text the site printed (numbers and booleans: the same value)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from cdc.core.wire.avro import read_fingerprint
from tests.collecting_builder import CollectingBuilder
from cdc.source.pgoutput import Insert, Relation, Update, decode_message
from sinks.changes import TableVersion
from sinks.decoding import EnvelopeDecoder
from tests.unit.test_event_builder import SITE

RECORDING = Path(__file__).resolve().parents[1] / "fixtures" / "pg15_types.jsonl"
_F32 = struct.Struct("<f")


def same_value(kind: str, raw: bytes, value: object) -> bool:
    if kind in ("int", "long"):
        return value == int(raw)
    if kind == "boolean":
        return value is (raw == b"t")
    if kind in ("float", "double"):
        want = float(raw)
        if kind == "float":
            want = _F32.unpack(_F32.pack(want))[0]
        assert isinstance(value, float)
        return (math.isnan(want) and math.isnan(value)) or (
            value == want and math.copysign(1, value) == math.copysign(1, want))
    return value == raw.decode()  # text, and logical kinds turned back into PostgreSQL text


def test_recorded_edge_values_come_back_as_the_site_printed_them() -> None:
    codecs = {}
    builder = CollectingBuilder(SITE, lookup=lambda oid, typmod: "interval day to second(2)",
                           on_new_schema=lambda c: codecs.__setitem__(c.fingerprint, c))
    kinds: dict[str, str] = {}
    checked = 0
    for line in RECORDING.read_text().splitlines():
        msg = decode_message(bytes.fromhex(json.loads(line)["payload"]))
        records = builder.handle(msg)
        if isinstance(msg, Relation):
            info = builder.relations.get(msg.oid)
            kinds = {c.field: c.kind for c in info.columns}
        if not isinstance(msg, (Insert, Update)):
            continue
        value = next(v for _, v in records if v is not None)
        codec = codecs[read_fingerprint(value)]
        change, _ = EnvelopeDecoder(codec, TableVersion.from_codec(codec)).decode(value)
        assert change.after is not None
        for (field, got), raw in zip(change.after.items(), msg.new):
            if raw is None:
                assert got is None, field
            else:
                assert same_value(kinds[field].name, raw, got), (field, raw, got)
                checked += 1
    assert checked > 300
    assert {kinds[f].name for f in ("n", "d", "tm", "ts", "tstz", "u", "by")} == {
        "decimal(12,4)", "date", "time-micros", "local-timestamp-micros", "timestamp-micros",
        "uuid", "bytes"}
