"""The recorded TimescaleDB stream through the chunk filter: exactly the data changes remain."""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from fastavro import parse_schema, schemaless_reader

from cdc.core.wire.avro import read_fingerprint
from tests.collecting_builder import CollectingBuilder
from cdc.source.pgoutput import (Begin, Delete, Insert, Message, Relation, Truncate, Update,
                          decode_message)
from cdc.source.timescale import (ChunkRange, ChunkTruncate, Hypertable, TimescaleFilter,
                           chunk_hypertable_id)
from tests.unit.test_event_builder import SITE

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "timescaledb-2.28.3"


def recorded_catalog() -> dict[tuple[str, str], Hypertable]:
    rows = json.loads((FIXTURE / "catalog.json").read_text())
    return {(r["chunk_schema"], r["chunk_table"]): Hypertable(r["hypertable_schema"],
                                                            r["hypertable_table"]) for r in rows}


def filtered_messages() -> tuple[list[object], TimescaleFilter]:
    catalog = recorded_catalog()
    tsf = TimescaleFilter(lambda schema, table: catalog.get((schema, table)))
    out = []
    for line in (FIXTURE / "stream.jsonl").read_text().splitlines():
        msg = tsf(decode_message(bytes.fromhex(json.loads(line)["payload"])))
        if msg is not None:
            out.append(msg)
    return out, tsf


def test_only_the_data_changes_remain_named_by_their_hypertable() -> None:
    messages, tsf = filtered_messages()
    names = {m.oid: f"{m.namespace}.{m.name}" for m in messages if isinstance(m, Relation)}
    counts: Counter[tuple[str, str]] = Counter()
    for m in messages:
        if isinstance(m, (Insert, Update, Delete)):
            counts[(type(m).__name__, names[m.relation_oid])] += 1
        elif isinstance(m, Truncate):
            for oid in m.relation_oids:
                counts[("Truncate", names[oid])] += 1
    # README of the fixture: 4321 inserts, 18 updates and 18 deletes of public.measurements
    assert counts == {
        ("Insert", "public.measurements"): 4321, ("Update", "public.measurements"): 18,
        ("Delete", "public.measurements"): 18,
        ("Insert", "public.site_config"): 3, ("Update", "public.site_config"): 2,
        ("Delete", "public.site_config"): 1,
        ("Insert", "public.alarms"): 6, ("Truncate", "public.alarms"): 1}
    assert set(names.values()) == {"public.measurements", "public.site_config", "public.alarms"}
    assert not any(isinstance(m, Message) and m.prefix.startswith("::timescaledb-")
                   for m in messages)
    # 1440 decompression re-inserts and 20 compressed-chunk inserts dropped
    assert tsf.dropped_changes == 1440 + 20


def test_chunk_names_carry_their_hypertable_id() -> None:
    assert chunk_hypertable_id("_hyper_7_15_chunk") == 7
    assert chunk_hypertable_id("compress_hyper_8_19_chunk") is None


def test_chunks_of_one_hypertable_share_one_event_schema() -> None:

    catalog = recorded_catalog()
    catalog = {k: Hypertable(h.schema, h.table, 4242 if h.table == "measurements" else None)
               for k, h in catalog.items()}
    tsf = TimescaleFilter(lambda schema, table: catalog.get((schema, table)))
    schemas: dict[int, dict] = {}
    builder = CollectingBuilder(SITE, on_new_schema=lambda c: schemas.__setitem__(c.fingerprint, c.schema),
                           hypertable_of=tsf.hypertable_of)
    for line in (FIXTURE / "stream.jsonl").read_text().splitlines():
        msg = tsf(decode_message(bytes.fromhex(json.loads(line)["payload"])))
        if msg is not None:
            builder.handle(msg)
    envelopes = [s for s in schemas.values()
                 if s.get("tributary.kind") == "change" and s["pg.table"] == "measurements"]
    assert len(envelopes) == 1  # three chunks, one table version
    assert envelopes[0]["pg.relid"] == 4242  # the hypertable's OID, not a chunk's


def test_a_truncate_between_compression_markers_is_not_data() -> None:
    """Inside ::timescaledb-(de)compression-start/-end every write is TimescaleDB's own."""
    tsf = TimescaleFilter(lambda schema, table: None)
    chunk = 16500
    assert tsf(Begin(100, 0, 7)) is not None
    assert tsf(Message(True, 100, "::timescaledb-decompression-start", b"")) is None
    assert tsf(Truncate((chunk,), False, False)) is None
    assert tsf(Message(True, 100, "::timescaledb-decompression-end", b"")) is None
    assert tsf(Truncate((chunk,), False, False)) == Truncate((chunk,), False, False)


def test_a_chunk_truncate_carries_the_chunks_time_range_into_its_event() -> None:
    """TRUNCATE of one chunk and one plain table: the chunk's event holds its range (before:
    start, after: end, nothing else); the plain table's holds none; a chunk whose range cannot
    be told (dropped, or sliced by a space dimension too) is left out."""
    messages = [decode_message(bytes.fromhex(json.loads(line)["payload"]))
                for line in (FIXTURE / "stream.jsonl").read_text().splitlines()]
    oids = {m.name: m.oid for m in messages if isinstance(m, Relation)}
    catalog = recorded_catalog()
    day = 86_400_000_000
    ranges = {"_hyper_7_15_chunk": ChunkRange("ts", 1_767_225_600_000_000,
                                              1_767_225_600_000_000 + day),
              "_hyper_7_17_chunk": ChunkRange("ts", 0, day, space=True)}
    tsf = TimescaleFilter(lambda schema, table: catalog.get((schema, table)),
                          ranges=lambda schema, table: ranges.get(table))
    schemas: dict[int, dict] = {}
    builder = CollectingBuilder(SITE, on_new_schema=lambda c: schemas.__setitem__(c.fingerprint,
                                                                             c.schema))
    for msg in messages:
        out = tsf(msg)
        if out is not None:
            builder.handle(out)
    builder.handle(tsf(Begin(1 << 40, 0, 99)))
    out = tsf(Truncate((oids["_hyper_7_15_chunk"], oids["_hyper_7_16_chunk"],
                        oids["_hyper_7_17_chunk"], oids["alarms"]), False, False))
    assert isinstance(out, ChunkTruncate)
    # 16: no range known (dropped since); 17: a space dimension too: both left out
    assert out.truncate.relation_oids == (oids["_hyper_7_15_chunk"], oids["alarms"])
    records = builder.handle(out)
    decoded = []
    for _, value in records:
        schema = schemas[read_fingerprint(value)]
        decoded.append(schemaless_reader(io.BytesIO(value[10:]), parse_schema(schema)))  # after the header
    chunk, alarms = decoded
    assert chunk["op"] == alarms["op"] == "t"
    assert {k: v for k, v in chunk["before"].items() if v is not None} == \
        {"ts": datetime(2026, 1, 1, tzinfo=timezone.utc)}
    assert {k: v for k, v in chunk["after"].items() if v is not None} == \
        {"ts": datetime(2026, 1, 2, tzinfo=timezone.utc)}
    assert alarms["before"] is None and alarms["after"] is None
