"""The Confluent Schema Registry mode against a real registry (Apicurio Registry, Confluent API)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any, Callable

from confluent_kafka import Consumer

from devenv.pipeline import execute, rows_of, sync, wait_until
from tests.integration.sites import SEED, TIMEOUT, Pipeline

COLUMNS = ["id", "name", "firmware", "installed"]


def subjects(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/subjects", timeout=10) as resp:
        return json.loads(resp.read())


def first_bytes(p: Pipeline, topic: str) -> set[bytes]:
    consumer = Consumer({"bootstrap.servers": p.kafka, "group.id": topic + "-peek",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen: set[bytes] = set()
    read = 0
    try:
        for _ in range(50):  # up to 50 s, until a few records are read
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error() and msg.value():
                seen.add(msg.value()[:1])
                read += 1
                if read >= 5:
                    break
    finally:
        consumer.close()
    return seen


def test_events_flow_in_the_wire_format_and_a_refused_change_stops_the_site(
        pipeline_factory: Callable[..., Pipeline], schema_registry: Any) -> None:
    p = pipeline_factory(sites=("a", "b"), registry_url=schema_registry.url).start()
    a, b = p.site_dsn["a"], p.site_dsn["b"]
    for site in ("a", "b"):
        execute(p.site_dsn[site], SEED[0], "ALTER TABLE devices ADD COLUMN serial text",
                "UPDATE devices SET serial = 'S' || id WHERE id < 5")
        p.sync(site)
        assert rows_of(p.cloud_dsn, "public.devices", COLUMNS + ["serial"], where_site=site) == \
            rows_of(p.site_dsn[site], "public.devices", COLUMNS + ["serial"])
    topic_a = f"{p.prefix}.a"
    assert first_bytes(p, topic_a) == {b"\x00"}  # 0x00 + schema ID: the Confluent wire format
    subject = f"{topic_a}-tributary.public.devices.Envelope"
    assert subject in subjects(schema_registry.url)
    with urllib.request.urlopen(f"{schema_registry.url}/subjects/{subject}/versions",
                                timeout=10) as resp:
        assert len(json.loads(resp.read())) == 2  # before and after ADD COLUMN
    # text -> integer cannot read the earlier events: the registry (BACKWARD) refuses it
    execute(a, "ALTER TABLE devices ALTER COLUMN firmware TYPE integer USING 1",
            "UPDATE devices SET name = 'after' WHERE id = 1")
    others = (p.sources["b"], p.sink)  # source a is meant to stop
    wait_until(lambda: "schema registry refused the schema of table public.devices" in
               p.sources["a"].log(), TIMEOUT, "the source of site a to stop", others)
    log = p.sources["a"].log()
    assert subject in log and "409" in log, log
    execute(b, "UPDATE devices SET name = 'b flows' WHERE id = 2")  # the other site flows
    sync(b, p.cloud_dsn, "b", TIMEOUT, others)
    assert rows_of(p.cloud_dsn, "public.devices", COLUMNS, where_site="b") == \
        rows_of(b, "public.devices", COLUMNS)
    assert p.sources["a"].proc.wait(10) == 1  # type: ignore[union-attr]
    for d in others:
        assert d.stop() == 0
