"""The sink's fast envelope decoder reads exactly what fastavro reads (raw, then as text)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings

from cdc.core.wire.avro import read_fingerprint
from cdc.core.errors import SchemaError
from cdc.source.pgoutput import UNCHANGED_TOAST, Begin, Column, Commit, Delete, Insert, Relation, Update
from sinks.changes import TableVersion
from sinks.decoding import EnvelopeDecoder
from tests.unit.test_event_builder import builder, tables_and_rows


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b and type(a) is type(b)


@settings(max_examples=150, deadline=None)
@given(tables_and_rows())
def test_fast_decoder_equals_fastavro(table: tuple[Relation, list[tuple]]) -> None:
    rel, rows = table
    b, codecs = builder()
    b.handle(rel)
    b.handle(Begin(1 << 40, 0, 9))
    records = []
    for row in rows:
        records += b.handle(Insert(rel.oid, row))
        records += b.handle(Delete(rel.oid, row, "O"))
    toast = tuple([rows[0][0]] + [UNCHANGED_TOAST] * (len(rows[0]) - 1))
    records += b.handle(Update(rel.oid, rows[0], "O", toast))
    b.handle(Commit(0, 1 << 40, (1 << 40) + 1, 0))
    decoders: dict[int, EnvelopeDecoder] = {}
    for _, value in records:
        if value is None:
            continue
        codec = codecs[read_fingerprint(value)]
        decoder = decoders.setdefault(codec.fingerprint,
                                      EnvelopeDecoder(codec, TableVersion.from_codec(codec)))
        assert decoder.fast
        slow = EnvelopeDecoder(codec, decoder.version)
        slow.fast = False  # fastavro reads the raw values, then the same text conversion
        change, site = decoder.decode(value)
        expected, slow_site = slow.decode(value)
        assert site == slow_site == "plant-1"
        assert change.op == expected.op and change.unchanged == expected.unchanged
        assert same(change.before, expected.before) and same(change.after, expected.after)


def test_truncated_envelope_is_a_schema_error_naming_the_table() -> None:
    b, codecs = builder()
    rel = Relation(1, "public", "t", "d", (Column(1, "id", 23, -1),))
    b.handle(rel)
    b.handle(Begin(100, 0, 7))
    (_, value), = b.handle(Insert(1, (b"5",)))
    codec = codecs[read_fingerprint(value)]
    decoder = EnvelopeDecoder(codec, TableVersion.from_codec(codec))
    with pytest.raises(SchemaError, match="public.t: envelope does not match"):
        decoder.decode(value[:-3])
    with pytest.raises(SchemaError, match="left over"):
        decoder.decode(value + b"\x00")
