"""Confluent Schema Registry framing: the ecosystem's wire format, for sites with a registry.

Where ``kafka.schema_registry_url`` is set, every record is ``0x00`` + the registry's 4-byte
schema ID + the Avro body, which Kafka Connect, ksqlDB and Flink read. Subjects follow the
TopicRecordNameStrategy (``<topic>-<record full name>``), because one site topic carries Begin,
Commit and one envelope and key per table: ``tributary.demo.site-1-tributary.public.devices.
Envelope`` holds every version of that table's envelope, so the registry's compatibility rule
(BACKWARD by default) checks each schema change of a site table against the ones before it, and
refuses an incompatible one, which stops the source with the subject and the registry's reason.

Record names are stable per table in this mode (``Envelope``, ``Key``): the registry's IDs tell
versions apart, where the self-contained mode needs a hash in the name. A sink reads both
framings, so old topics stay readable after a site switches.

``mock://<name>`` URLs give confluent-kafka's in-memory registry client (one process only: for
tests; it checks no compatibility).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from cachetools import LRUCache
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from cdc.core.wire.avro import REGISTRY_ID_BASE, Codec, schema_json
from cdc.core.config import KafkaConfig
from cdc.core.errors import ConnectionLost, SchemaError

log = logging.getLogger(__name__)


class Framing(Protocol):
    """How the source turns a schema into a codec whose header the sink can resolve."""

    stable_names: bool

    def codec(self, schema: dict[str, Any]) -> Codec: ...


class SelfContained:
    """Single-object encoding; schemas go to the compacted schema topic (cdc.runtime.schema_store)."""

    stable_names = False

    def codec(self, schema: dict[str, Any]) -> Codec:
        return Codec.of(schema)


def registry_client(kafka: KafkaConfig) -> SchemaRegistryClient:
    """A registry client from ``kafka.schema_registry_url`` and ``schema_registry_config``."""
    conf: dict[str, Any] = {"url": kafka.schema_registry_url, **kafka.schema_registry_config}
    try:
        return SchemaRegistryClient.new_client(conf)
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"kafka.schema_registry_url {kafka.schema_registry_url!r}: {exc}") from exc


def subject_of(topic: str, schema: dict[str, Any]) -> str:
    """TopicRecordNameStrategy: ``<topic>-<namespace>.<name>``."""
    namespace = schema.get("namespace")
    name = schema["name"]
    return f"{topic}-{namespace}.{name}" if namespace else f"{topic}-{name}"


class RegistryFraming:
    """Source side: register each new schema under its subject, frame with the ID."""

    stable_names = True

    def __init__(self, client: SchemaRegistryClient, topic: str) -> None:
        self._client = client
        self._topic = topic

    def codec(self, schema: dict[str, Any]) -> Codec:
        subject = subject_of(self._topic, schema)
        table = ".".join(str(schema[k]) for k in ("pg.schema", "pg.table") if k in schema)
        try:
            schema_id = self._client.register_schema(subject, Schema(schema_json(schema), "AVRO"))
        except SchemaRegistryError as exc:
            what = f" of table {table}" if table else ""
            raise SchemaError(f"schema registry refused the schema{what} under subject "
                              f"{subject} (HTTP {exc.http_status_code}, code {exc.error_code}): "
                              f"{exc.error_message}") from exc
        except Exception as exc:  # unreachable, timeouts: retried like a lost connection
            raise ConnectionLost(f"cannot register subject {subject} with the schema registry: "
                                 f"{exc}") from exc
        log.info("registered schema", extra={"subject": subject, "id": schema_id})
        return Codec.registered(schema, schema_id)


#: registry schemas the sink keeps parsed; one evicted is fetched again, equal
REGISTRY_SCHEMAS_KEPT = 1024


class RegistrySchemas:
    """Sink side: schema ID -> Codec, fetched from the registry once while among the
    :data:`REGISTRY_SCHEMAS_KEPT` most recently used."""

    def __init__(self, client: SchemaRegistryClient, kept: int = REGISTRY_SCHEMAS_KEPT) -> None:
        self._client = client
        self._codecs: LRUCache[int, Codec] = LRUCache(kept)

    def __len__(self) -> int:
        return len(self._codecs)

    def get(self, identity: int, where: str = "") -> Codec:
        schema_id = identity - REGISTRY_ID_BASE
        codec = self._codecs.get(schema_id)
        if codec is None:
            try:
                found = self._client.get_schema(schema_id)
            except SchemaRegistryError as exc:
                raise SchemaError(f"{where}: schema ID {schema_id} not in the schema registry: "
                                  f"{exc.error_message}") from exc
            except Exception as exc:  # unreachable, timeouts: retried like a lost connection
                raise ConnectionLost(f"{where}: cannot fetch schema ID {schema_id} from the "
                                     f"schema registry: {exc}") from exc
            codec = self._codecs[schema_id] = Codec.registered(json.loads(found.schema_str),
                                                               schema_id)
        return codec
