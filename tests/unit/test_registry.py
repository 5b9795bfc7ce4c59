"""The Confluent wire format, against confluent-kafka's in-memory registry client.

No registry server is installable here (see README, "Schema registry"); the client's mock://
mode keeps subjects and IDs in memory in this process, which is enough to check the framing,
the subjects, the version history and that every past version stays readable.
"""

from __future__ import annotations

import struct

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from cdc.core.wire.avro import read_fingerprint
from cdc.core.errors import SchemaError
from tests.collecting_builder import CollectingBuilder
from cdc.source.pgoutput import Begin, Column, Commit, Insert, Relation, Update
from cdc.runtime.registry import RegistryFraming, RegistrySchemas, subject_of
from sinks.changes import TableVersion
from sinks.decoding import EnvelopeDecoder
from tests.unit.test_event_builder import SITE

TOPIC = "tributary.plant-1"
V1 = Relation(16384, "public", "devices", "d", (Column(1, "id", 23, -1), Column(0, "name", 25, -1),
                                                Column(0, "price", 1700, (10 << 16 | 2) + 4)))
V2 = Relation(16384, "public", "devices", "d", V1.columns + (Column(0, "installed", 1082, -1),))


def stream(client: SchemaRegistryClient) -> list[tuple[bytes, bytes | None]]:
    b = CollectingBuilder(SITE, framing=RegistryFraming(client, TOPIC))
    out = []
    b.handle(V1)
    b.handle(Begin(100, 0, 7))
    out += b.handle(Insert(16384, (b"1", b"pump", b"12.50")))
    out += b.handle(Commit(0, 100, 101, 0))
    b.handle(V2)  # ALTER TABLE devices ADD COLUMN installed date
    b.handle(Begin(200, 0, 8))
    out += b.handle(Update(16384, None, None, (b"1", b"pump", b"NaN", b"2024-02-29")))
    out += b.handle(Commit(0, 200, 201, 0))
    return out


def test_records_use_the_wire_format_and_every_version_stays_readable() -> None:
    client = SchemaRegistryClient.new_client({"url": "mock://wire"})
    records = stream(client)
    for key, value in records:
        assert key[:1] == b"\x00" and (value is None or value[:1] == b"\x00")
    subject = f"{TOPIC}-tributary.public.devices.Envelope"
    assert {subject, f"{TOPIC}-tributary.public.devices.Key", f"{TOPIC}-tributary.Begin",
            f"{TOPIC}-tributary.Commit"} <= set(client.get_subjects())
    assert sorted(client.get_versions(subject)) == [1, 2]  # one subject: the table's history
    # the sink resolves each schema ID through the registry, both versions
    schemas = RegistrySchemas(client)
    rows = []
    for _, value in records:
        codec = schemas.get(read_fingerprint(value), "test")
        assert codec.header == b"\x00" + struct.pack(">I", codec.fingerprint - (1 << 64))
        if codec.kind == "change":
            change, site = EnvelopeDecoder(codec, TableVersion.from_codec(codec)).decode(value)
            assert site == "plant-1"
            rows.append(change.after)
    assert rows == [{"id": 1, "name": "pump", "price": "12.50"},
                    {"id": 1, "name": "pump", "price": "NaN", "installed": "2024-02-29"}]


def test_a_refused_schema_names_table_subject_and_reason() -> None:
    class Refusing:
        def register_schema(self, subject: str, schema: object) -> int:
            raise SchemaRegistryError(409, 409, "Schema being registered is incompatible with an"
                                                " earlier schema for subject")

    b = CollectingBuilder(SITE, framing=RegistryFraming(SchemaRegistryClient.new_client(
        {"url": "mock://ok"}), TOPIC))
    b._framing = RegistryFraming(Refusing(), TOPIC)  # type: ignore[arg-type]
    b.handle(V1)
    b.handle(Begin(100, 0, 7))
    with pytest.raises(SchemaError, match="public.devices under subject "
                       f"{TOPIC}-tributary.public.devices.Envelope .HTTP 409.*incompatible"):
        b.handle(Insert(16384, (b"1", b"pump", b"1.00")))


def test_subjects_follow_the_topic_record_name_strategy() -> None:
    assert subject_of("p.s", {"name": "Envelope", "namespace": "tributary.a.b"}) == \
        "p.s-tributary.a.b.Envelope"
