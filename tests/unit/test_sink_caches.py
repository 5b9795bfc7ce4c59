"""The sink's caches keyed by schema version stay bounded, and an evicted entry comes back equal.

Table versions only accumulate (every schema change of every site table, times every site), so
every cache keyed by a fingerprint, a registry ID or a table shape is bounded: decoders (first in,
first out: read once per record), and LRU for parsed schemas (schema topic and registry),
prepared cloud targets, stages and COPY formatters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from psycopg import sql

from cdc.core.wire.avro import Codec, read_fingerprint
from cdc.core.config import KafkaConfig
from cdc.core.types.integers import LONG
from cdc.core.types.text import STRING
from cdc.source.pgoutput import Begin, Column, Commit, Insert, Relation
from cdc.runtime.registry import RegistrySchemas
from cdc.runtime.schema_store import SchemaRegistry
from sinks import applier as applier_module
from sinks import tables as tables_module
from sinks.applier import Applier
from sinks.changes import ColumnDef, TableVersion
from sinks.decoding import EnvelopeDecoder, decoder_cache
from sinks.tables import CloudTables, Target
from tests.unit.test_event_builder import builder

VERSIONS = 40
KEPT = 8


def envelopes() -> tuple[list[bytes], dict[int, Codec]]:
    """One insert per schema version of table t (version i has i text columns)."""
    b, codecs = builder()
    values = []
    for i in range(1, VERSIONS + 1):
        b.handle(Relation(1, "public", "t", "d", (Column(1, "id", 23, -1),) + tuple(
            Column(0, f"c{j}", 25, -1) for j in range(i))))
        b.handle(Begin(1 << 40, 0, 9))
        (_, value), = b.handle(Insert(1, (str(i).encode(),) + (f"v{i}".encode(),) * i))
        b.handle(Commit(0, 1 << 40, (1 << 40) + 1, 0))
        values.append(value)
    return values, codecs


def test_decoders_by_fingerprint_are_bounded_and_rebuilt_equal() -> None:
    values, codecs = envelopes()
    decoders = decoder_cache(KEPT)
    built = 0

    def decode(value: bytes) -> Any:  # as Sink._ingest does
        nonlocal built
        fp = read_fingerprint(value)
        decoder = decoders.get(fp)
        if decoder is None:
            built += 1
            decoder = decoders[fp] = EnvelopeDecoder(codecs[fp], TableVersion.from_codec(
                codecs[fp]))
        return decoder.decode(value)

    first = [decode(v) for v in values]
    assert len(decoders) == KEPT and built == VERSIONS
    again = [decode(v) for v in values]  # every one evicted and built again
    assert built == 2 * VERSIONS and len(decoders) == KEPT
    assert [(c.version, c.op, c.before, c.after, c.unchanged, site) for c, site in again] == \
        [(c.version, c.op, c.before, c.after, c.unchanged, site) for c, site in first]


def test_schema_topic_cache_is_bounded_and_reads_an_evicted_schema_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, codecs = envelopes()
    topic = list(codecs.values())[:3 * KEPT]  # what the schema topic holds
    registry = SchemaRegistry(KafkaConfig(bootstrap_servers="unused:9092"), kept=KEPT)
    reads = 0

    def refresh(timeout: float = 30.0, want: int | None = None) -> Codec | None:
        nonlocal reads
        reads += 1
        found = None
        for codec in topic:  # as the real refresh: each schema read, then the wanted one
            again = Codec.of(codec.schema)
            registry.add(again)
            found = again if again.fingerprint == want else found
        if found is not None:
            registry.add(found)
        return found

    monkeypatch.setattr(registry, "refresh", refresh)
    first = {c.fingerprint: registry.get(c.fingerprint, "test") for c in topic}
    assert len(registry) == KEPT
    assert all(registry.get(fp, "test").schema == codec.schema and
               registry.get(fp, "test").header == codec.header for fp, codec in first.items())
    assert len(registry) == KEPT and reads > 1


@dataclass
class _Found:
    schema_str: str


class _Client:
    """A registry client that counts fetches."""

    def __init__(self, schemas: dict[int, str]) -> None:
        self.schemas = schemas
        self.fetches = 0

    def get_schema(self, schema_id: int) -> _Found:
        self.fetches += 1
        return _Found(self.schemas[schema_id])


def test_registry_schemas_are_bounded_and_fetched_again_equal() -> None:
    from cdc.core.wire.avro import REGISTRY_ID_BASE, schema_json

    _, codecs = envelopes()
    client = _Client({i: schema_json(c.schema) for i, c in enumerate(codecs.values(), 1)})
    schemas = RegistrySchemas(client, kept=KEPT)  # type: ignore[arg-type]
    first = {i: schemas.get(REGISTRY_ID_BASE + i) for i in client.schemas}
    assert len(schemas) == KEPT
    for i, codec in first.items():
        again = schemas.get(REGISTRY_ID_BASE + i)
        assert again.header == codec.header and again.schema == codec.schema
    assert client.fetches == 2 * len(first) and len(schemas) == KEPT


def _version(i: int) -> TableVersion:
    return TableVersion(i, "public", "t", (ColumnDef("id", "id", "integer", True, LONG),
                                          ColumnDef(f"c{i}", f"c{i}", "text", False, STRING)))


def test_prepared_targets_are_bounded_and_prepared_again_equal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables_module, "TARGETS_KEPT", KEPT)
    tables = CloudTables("site_id", {})
    prepared = 0

    def prepare(conn: Any, version: TableVersion, site_id: str) -> Target:
        nonlocal prepared
        prepared += 1
        return Target("public", "t", sql.Identifier("public", "t"), version.columns)

    monkeypatch.setattr(tables, "_prepare", prepare)
    first = {(site, i): tables.target(None, _version(i), site)  # type: ignore[arg-type]
             for site in ("a", "b") for i in range(VERSIONS)}
    assert len(tables._ready) == KEPT and prepared == len(first)
    for (site, i), target in first.items():
        assert tables.target(None, _version(i), site) == target  # type: ignore[arg-type]
    assert len(tables._ready) == KEPT and prepared == 2 * len(first)


class _Conn:
    """Records statements instead of running them."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def execute(self, stmt: sql.Composable, *args: Any) -> None:
        self.statements.append(stmt.as_string(None))


def test_stages_are_bounded_and_an_evicted_dirty_stage_is_emptied(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(applier_module, "SHAPES_KEPT", KEPT)
    conn = _Conn()
    applier = Applier(conn, CloudTables("site_id", {}))  # type: ignore[arg-type]
    targets = [Target("public", "t", sql.Identifier("public", "t"), _version(i).columns)
               for i in range(VERSIONS)]
    first = [applier._stage(t, list(t.columns), "rows") for t in targets]
    assert len(applier._stages) == KEPT
    conn.statements.clear()
    # the same transaction: the first stage was evicted, holds rows, and is used again
    assert applier._stage(targets[0], list(targets[0].columns), "rows") == first[0]
    assert conn.statements[0].startswith("CREATE TEMP TABLE IF NOT EXISTS")
    assert conn.statements[1].startswith("TRUNCATE")
    assert len(applier._stages) == KEPT
