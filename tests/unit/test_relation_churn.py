"""The source's per-relation state stays bounded while TimescaleDB chunks come and go.

Each chunk has its own OID and its own Relation message; retention and compression drop
chunks all the time. The relation cache and the chunk filter are protocol state (a chunk is
described once per session), so they lose a chunk only once the site dropped it and the stream
is past the drop (cdc.source.dropped); derived caches (codecs by table version, announced schemas)
are LRU-bounded and rebuild an evicted entry equal.
"""

from __future__ import annotations

import pytest

from cdc.source import event_builder
from cdc.core.wire.avro import Codec
from cdc.core.errors import SchemaError
from cdc.source.dropped import DroppedRelations
from tests.collecting_builder import CollectingBuilder
from cdc.source.pgoutput import Begin, Column, Commit, Insert, Relation
from cdc.source.timescale import CHUNK_SCHEMA, Hypertable, TimescaleFilter
from tests.unit.test_event_builder import SITE

HYPERTABLE = Hypertable("public", "readings", relid=5000, time_column="ts",
                        chunk_interval=86_400_000_000)
COLUMNS = (Column(1, "device", 23, -1), Column(1, "ts", 20, -1), Column(0, "value", 701, -1))
LIVE_CHUNKS = 20  # what the site keeps (retention drops the older ones)
SWEEP_EVERY = 50  # chunks created between two sweeps of the source


def chunk(n: int) -> Relation:
    return Relation(100_000 + n, CHUNK_SCHEMA, f"_hyper_1_{n}_chunk", "d", COLUMNS)


def lookup(schema: str, table: str) -> Hypertable | None:
    if schema == CHUNK_SCHEMA and table.startswith("_hyper_1_"):
        return HYPERTABLE
    return None


class Site:
    """A site whose chunks come and go, streamed through the filter and the builder."""

    def __init__(self) -> None:
        self.schemas: dict[int, Codec] = {}
        self.filter = TimescaleFilter(lookup)
        self.builder = CollectingBuilder(SITE, on_new_schema=lambda c: self.schemas.__setitem__(
            c.fingerprint, c), hypertable_of=self.filter.hypertable_of)
        self.dropped = DroppedRelations()
        self.lsn = 1 << 32
        self.live: list[int] = []

    def feed(self, msg: object) -> list[tuple[bytes, bytes | None]]:
        passed = self.filter(msg)
        return self.builder.handle(passed) if passed is not None else []

    def write(self, n: int, value: bytes) -> list[tuple[bytes, bytes | None]]:
        """One transaction inserting a row into chunk ``n`` (described first if new)."""
        rel = chunk(n)
        out = []
        if rel.oid not in self.live:
            self.live.append(rel.oid)
            self.feed(rel)  # pgoutput: before the relation's first change in the session
        self.lsn += 100
        out += self.feed(Begin(self.lsn, 0, 7))
        out += self.feed(Insert(rel.oid, (b"1", str(n).encode(), value)))
        out += self.feed(Commit(0, self.lsn, self.lsn + 10, 0))
        return out

    def retention(self) -> None:
        """The site drops its oldest chunks; the source's next sweep finds them gone."""
        gone, self.live = self.live[:-LIVE_CHUNKS], self.live[-LIVE_CHUNKS:]
        cached = self.builder.relations.oids() | self.filter.oids()
        self.dropped.note(cached & set(gone), self.lsn + 5)  # what dropped_relations answers

    def sweep(self) -> None:
        due = self.dropped.due(self.lsn + 10)  # the stream received up to the last Commit
        self.builder.forget(due)
        self.filter.forget(due)


def test_chunk_state_stays_bounded_and_events_stay_equal() -> None:
    site = Site()
    first = site.write(0, b"1.5")
    for n in range(1, 5_000):
        site.write(n, b"2.5")
        if n % SWEEP_EVERY == 0:
            site.retention()
            site.sweep()
            cached = len(site.builder.relations)
            assert cached <= LIVE_CHUNKS + SWEEP_EVERY
            assert len(site.filter.oids()) <= LIVE_CHUNKS + SWEEP_EVERY
            assert len(site.filter._chunk_names) <= LIVE_CHUNKS + SWEEP_EVERY
            assert len(site.builder._codecs) <= cached
    # a chunk created after all that churn (here: its OID reused) is described and encoded
    # exactly as the first one was, under the one hypertable version's schemas
    assert chunk(0).oid not in site.live and chunk(0).oid not in site.builder.relations.oids()
    again = site.write(0, b"1.5")
    assert [k for k, _ in again] == [k for k, _ in first]
    assert again[1][1][:10] == first[1][1][:10]  # envelope header: the same schema fingerprint
    assert len(site.schemas) == 5  # Begin, Commit, Position, one envelope, one key


def test_a_relation_is_forgotten_only_after_the_stream_passed_its_drop() -> None:
    dropped = DroppedRelations()
    dropped.note({1, 2}, 1000)
    dropped.note({3}, 2000)
    dropped.note(set(), 2500)  # nothing gone: nothing to wait for
    assert dropped.due(999) == set()
    assert dropped.due(1000) == {1, 2}
    assert dropped.due(1999) == set() and dropped.waiting == 1
    assert dropped.due(5000) == {3} and dropped.waiting == 0


def test_a_forgotten_relation_is_not_decoded_without_a_new_description() -> None:
    # why the relation cache may not simply evict: pgoutput would not describe it again
    site = Site()
    site.write(1, b"1.0")
    site.builder.forget({chunk(1).oid})
    site.filter.forget({chunk(1).oid})
    site.feed(Begin(1 << 40, 0, 8))
    with pytest.raises(SchemaError, match=f"relation OID {chunk(1).oid} used before"):
        site.feed(Insert(chunk(1).oid, (b"1", b"1", b"1.0")))


def test_table_versions_are_lru_bounded_and_rebuilt_equal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_builder, "VERSIONS_KEPT", 8)
    monkeypatch.setattr(event_builder, "ANNOUNCED_KEPT", 16)
    announced: list[int] = []
    b = CollectingBuilder(SITE, on_new_schema=lambda c: announced.append(c.fingerprint))

    def version(i: int) -> Relation:  # schema version i of table t: i extra columns
        return Relation(1, "public", "t", "d", (Column(1, "id", 23, -1),) + tuple(
            Column(0, f"c{j}", 25, -1) for j in range(i)))

    def insert(i: int) -> list[tuple[bytes, bytes | None]]:
        b.handle(version(i))
        b.handle(Begin(1 << 40, 0, 9))
        out = b.handle(Insert(1, (b"7",) + (b"x",) * i))
        b.handle(Commit(0, 1 << 40, (1 << 40) + 1, 0))
        return out

    first = insert(1)
    for i in range(2, 60):
        insert(i)
        assert len(b._by_info) <= 8 and len(b._announced) <= 16
    before = len(announced)
    assert insert(1) == first  # evicted long ago: rebuilt byte for byte
    assert announced[before:] == announced[3:5]  # its envelope and key schemas, published again
