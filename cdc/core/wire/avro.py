"""Avro schemas of change events and their single-object framing.

Fixed schemas (source block, Begin, Commit) live in ``schemas/*.avsc``. Per-table schemas are
derived from a table version (:class:`cdc.core.wire.model.TableInfo`): an envelope with ``before``,
``after``, ``op``, ``source`` and ``unchanged_toast``, and a key with the table identity and its
key columns. Every column field records its exact PostgreSQL name and type (``pg.name``,
``pg.type``, ``pg.key``) so the sink can create and check the cloud table.

Self-contained framing (the embedded default, no registry): Avro single-object encoding,
``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the schema's parsing canonical
form + the Avro body. The canonical form drops custom attributes, so the envelope's record name
carries a hash of the table metadata: two table versions that differ only in a PostgreSQL type
modifier still get distinct fingerprints.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

from cdc.core.errors import SchemaError
from cdc.core.wire.model import TableInfo
from cdc.core.types.mapping import avro_type

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_FP = struct.Struct("<Q")
CONFLUENT_MAGIC = b"\x00"
_ID = struct.Struct(">I")
#: schema identities at or above this are Confluent registry IDs (plus this base)
REGISTRY_ID_BASE = 1 << 64

OPS = ["c", "u", "d", "r", "t"]


def load_fixed_schema(name: str) -> dict[str, Any]:
    """One of the fixed schemas in ``schemas/`` by file stem (``source``, ``begin``, ``commit``)."""
    path = resources.files("schemas") / f"{name}.avsc"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read fixed Avro schema {path}: {exc}") from exc


def schema_fingerprint(schema: dict[str, Any]) -> int:
    """CRC-64-AVRO fingerprint of the schema's parsing canonical form, as an unsigned int."""
    canonical = to_parsing_canonical_form(parse_schema(schema, _write_hint=False))
    return int(fingerprint(canonical, "CRC-64-AVRO"), 16)


def _name_part(text: str) -> str:
    cleaned = "".join(ch if ch.isalnum() and ch.isascii() or ch == "_" else "_" for ch in text)
    return cleaned if cleaned and not cleaned[0].isdigit() else "_" + cleaned


def _metadata_hash(info: TableInfo) -> str:
    meta = [info.schema, info.table, info.oid, info.replica_identity, info.hypertable,
            [[c.name, c.sql_type, c.kind.name, c.is_key, c.domain, [d.to_json() for d in c.defs],
              c.extension, c.attnum, c.missing] for c in info.columns]]
    return hashlib.sha256(json.dumps(meta).encode()).hexdigest()[:12]


def _column_field(col: Any, nullable: bool) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if col.domain:
        extra["pg.domain"] = col.domain
    if col.defs:
        extra["pg.defs"] = [d.to_json() for d in col.defs]
    if col.extension:
        extra["pg.extension"] = col.extension
    if getattr(col, "attnum", None) is not None:
        extra["pg.attnum"] = col.attnum
    if getattr(col, "missing", None) is not None:
        extra["pg.missing"] = col.missing
    return {"name": col.field, "type": avro_type(col.kind, nullable),
            "pg.name": col.name, "pg.type": col.sql_type, "pg.key": col.is_key, **extra,
            **({"default": None} if nullable else {})}


def envelope_schema(info: TableInfo, stable_names: bool = False) -> dict[str, Any]:
    """The value schema of a table version's change events (``stable_names``: record names
    without the version hash, for the registry framing, whose IDs tell versions apart)."""
    namespace = f"tributary.{_name_part(info.schema)}.{_name_part(info.table)}"
    row = {"type": "record", "name": "Row",
           "fields": [_column_field(c, nullable=True) for c in info.columns]}
    return {
        "type": "record", "namespace": namespace,
        "name": "Envelope" if stable_names else f"Envelope_{_metadata_hash(info)}",
        "tributary.kind": "change",
        "pg.schema": info.schema, "pg.table": info.table,
        **({"pg.relid": info.oid} if info.oid else {}),
        "pg.replica_identity": info.replica_identity,
        **({"pg.nullable_key": True} if info.nullable_key else {}),
        **({"pg.hypertable": {"time_column": info.hypertable[0],
                              "chunk_interval": info.hypertable[1]}} if info.hypertable else {}),
        "fields": [
            {"name": "before", "type": ["null", row], "default": None},
            {"name": "after", "type": ["null", "Row"], "default": None},
            {"name": "op", "type": {"type": "enum", "name": "Op", "symbols": OPS}},
            {"name": "source", "type": load_fixed_schema("source")},
            {"name": "unchanged_toast", "type": {"type": "array", "items": "string"},
             "default": []},
        ],
    }


def key_schema(info: TableInfo, stable_names: bool = False) -> dict[str, Any]:
    """The record-key schema of a table version: table identity plus key columns."""
    namespace = f"tributary.{_name_part(info.schema)}.{_name_part(info.table)}"
    key_row = {"type": "record", "name": "KeyRow",
               "fields": [_column_field(c, nullable=info.nullable_key) for c in info.key_columns]}
    return {
        "type": "record", "namespace": namespace,
        "name": "Key" if stable_names else f"Key_{_metadata_hash(info)}",
        "tributary.kind": "key",
        "fields": [
            {"name": "schema", "type": "string"},
            {"name": "table", "type": "string"},
            {"name": "key", "type": ["null", key_row], "default": None},
        ],
    }


def control_schema(name: str) -> dict[str, Any]:
    """A fixed control schema (Begin, Commit), marked with its kind for the sink."""
    schema = load_fixed_schema(name)
    schema["tributary.kind"] = name
    return schema


@dataclass(frozen=True, slots=True)
class Codec:
    """One schema ready to encode and decode single-object Avro."""

    schema: dict[str, Any]  # the JSON form, custom attributes included
    parsed: Any
    fingerprint: int
    header: bytes

    @classmethod
    def of(cls, schema: dict[str, Any]) -> "Codec":
        """Self-contained framing: single-object encoding, identified by the fingerprint."""
        fp = schema_fingerprint(schema)
        return cls(schema=schema, parsed=parse_schema(schema), fingerprint=fp,
                   header=SINGLE_OBJECT_MAGIC + _FP.pack(fp))

    @classmethod
    def registered(cls, schema: dict[str, Any], schema_id: int) -> "Codec":
        """Confluent wire format: magic byte 0, then the registry's 4-byte schema ID. Its
        identity (``fingerprint``) is ``REGISTRY_ID_BASE + id``, apart from every CRC-64."""
        return cls(schema=schema, parsed=parse_schema(schema),
                   fingerprint=REGISTRY_ID_BASE + schema_id,
                   header=CONFLUENT_MAGIC + _ID.pack(schema_id))

    @property
    def kind(self) -> str:
        return str(self.schema.get("tributary.kind", ""))

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        schemaless_writer(buf, self.parsed, record)
        return buf.getvalue()

    def decode_body(self, data: bytes | memoryview) -> Any:
        """Decode a single-object message whose header has been checked to be ours."""
        return schemaless_reader(io.BytesIO(data[len(self.header):]), self.parsed, None)


def without_logical_types(schema: Any) -> Any:
    """The schema with every ``logicalType`` dropped: fastavro then reads the raw Avro values
    (day and microsecond counts, decimal bytes), which cover PostgreSQL's whole range, where
    Python's date and datetime stop at year 9999."""
    if isinstance(schema, dict):
        return {k: without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [without_logical_types(v) for v in schema]
    return schema


def read_fingerprint(data: bytes | memoryview, where: str = "") -> int:
    """The schema identity of a message in either framing: the fingerprint of a single-object
    encoded one, ``REGISTRY_ID_BASE`` + the schema ID of a Confluent wire-format one."""
    if len(data) >= 10 and data[:2] == SINGLE_OBJECT_MAGIC:
        return _FP.unpack_from(data, 2)[0]
    if len(data) >= 5 and data[:1] == CONFLUENT_MAGIC:
        return REGISTRY_ID_BASE + _ID.unpack_from(data, 1)[0]
    raise SchemaError(f"{where}: neither Avro single-object encoding nor the Confluent wire "
                      f"format (first bytes {bytes(data[:2])!r})")


def schema_json(schema: dict[str, Any]) -> str:
    """The stored text form of a schema (stable: sorted keys, no spaces)."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))
