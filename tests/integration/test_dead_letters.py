"""Dead letters (issue 11): a site transaction the cloud cannot apply goes whole to the
dead-letter topic with its reason and coordinates, the site goes on, ``cdc status`` counts it,
and ``cdc replay --dead-letters`` applies it once the cause is fixed. Without the setting the
site stops, as before."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import psycopg

from cdc.core.config import load_config
from devenv.pipeline import Daemon, cloud_config, count, execute, rows_of, wait_until
from tests.integration.sites import TABLES, TIMEOUT, Pipeline
from tests.integration.test_faults import read_messages, read_topic, write_topic
from tests.integration.test_operations import cdc

POISON = "ALTER TABLE public.devices ADD CONSTRAINT no_poison CHECK (name NOT LIKE 'poison%')"


def dead_letter_config(p: Pipeline) -> str:
    return f'dead_letter_topic = "{p.prefix}._dead_letters"'


def dead_letter_rows(p: Pipeline) -> list[tuple]:
    with psycopg.connect(p.cloud_dsn) as conn:
        return conn.execute("SELECT site_id, state, tables, reason, first_offset, last_offset"
                            " FROM tributary.dead_letters ORDER BY first_offset").fetchall()


def topic_headers(p: Pipeline, topic: str) -> list[dict[str, str]]:
    return [{k: v.decode() for k, v in m.headers() or []} for m in read_messages(p.kafka, topic)]


def test_a_transaction_the_cloud_refuses_goes_whole_to_the_dead_letters_and_replays(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    """Ten quick transactions at site a, one of which the cloud refuses (a CHECK constraint in
    the cloud only) and which also writes readings: that one is in neither cloud table, the
    other nine and site b are applied; after the constraint is dropped, replaying the dead
    letters makes the cloud equal to the site."""
    p = pipeline_factory()
    cloud_config(p.sink.config, p.cloud_dsn, p.kafka, p.prefix,  # several txs in a batch
                 load_config(p.sink.config).need_sink().group_id,
                 "batch_max_ms = 1500\n" + dead_letter_config(p))
    p.start()
    a, b = p.site_dsn["a"], p.site_dsn["b"]
    p.seed("INSERT INTO devices (id, name) VALUES (1, 'first')")
    execute(p.cloud_dsn, POISON)
    with psycopg.connect(a, autocommit=True) as conn:
        for n in range(10):
            with conn.transaction():
                name = "poison" if n == 6 else f"dev-{n}"
                conn.execute("INSERT INTO devices (id, name) VALUES (%s, %s)", (100 + n, name))
                conn.execute("INSERT INTO readings VALUES (%s, now(), %s, 1)", (100 + n, n))
    execute(b, "INSERT INTO devices (id, name) VALUES (7, 'b goes on')")
    p.sync("a")
    p.sync("b")
    p.assert_equal("b")
    cloud_ids = [int(r[0]) for r in rows_of(p.cloud_dsn, "public.devices", ["id"],
                                            where_site="a")]
    assert cloud_ids == [1] + [100 + n for n in range(10) if n != 6]
    assert count(p.cloud_dsn, "SELECT count(*) FROM public.readings WHERE site_id = 'a'"
                              " AND device_id = 106") == 0  # the whole transaction, not a part
    rows = dead_letter_rows(p)
    assert len(rows) == 1, rows
    site, state, tables, reason, first, last = rows[0]
    assert (site, state) == ("a", "pending")
    assert sorted(tables) == ["public.devices", "public.readings"]
    assert "no_poison" in reason, reason
    headers = topic_headers(p, f"{p.prefix}._dead_letters")
    assert len(headers) == last - first + 1 == 4  # Begin, two changes, Commit
    assert {h["tributary.site"] for h in headers} == {"a"}
    assert all("no_poison" in h["tributary.reason"] for h in headers)
    assert [int(h["tributary.offset"]) for h in headers] == list(range(first, last + 1))

    code, out, err = cdc("status", "--config", str(p.sink.config), "--json")
    assert code == 1, (out, err)
    assert {x["site"]: x["dead_letters"] for x in json.loads(out)} == {"a": 1, "b": 0}

    code, out, err = cdc("replay", "--config", str(p.sink.config), "--dead-letters")
    assert code == 1 and "still pending" in out and "no_poison" in out, (out, err)
    execute(p.cloud_dsn, "ALTER TABLE public.devices DROP CONSTRAINT no_poison")
    code, out, err = cdc("replay", "--config", str(p.sink.config), "--dead-letters")
    assert code == 0 and "1 dead letter(s) applied" in out, (out, err)
    p.assert_equal("a")
    assert [r[1] for r in dead_letter_rows(p)] == ["replayed"]
    code, out, err = cdc("status", "--config", str(p.sink.config), "--json")
    assert code == 0 and all(x["dead_letters"] == 0 for x in json.loads(out)), (out, err)
    p.stop()


def test_a_large_transaction_applied_in_parts_goes_whole_to_the_dead_letters(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    """A transaction larger than batch_max_changes is applied in parts inside one cloud
    transaction; a refused row in its middle rolls back every part, the whole transaction is
    a dead letter, and the site's next transaction applies."""
    p = pipeline_factory(sites=("a",))
    cloud_config(p.sink.config, p.cloud_dsn, p.kafka, p.prefix,
                 load_config(p.sink.config).need_sink().group_id,
                 "batch_max_changes = 200\n" + dead_letter_config(p))
    p.start()
    a = p.site_dsn["a"]
    p.seed("INSERT INTO devices (id, name) VALUES (1, 'first')")
    execute(p.cloud_dsn, POISON)
    execute(a, "INSERT INTO devices (id, name) SELECT g, CASE WHEN g = 1500 THEN 'poison'"
               " ELSE 'big' END FROM generate_series(1000, 2999) g")
    execute(a, "INSERT INTO devices (id, name) VALUES (5, 'after')")
    p.sync("a")
    assert [int(r[0]) for r in rows_of(p.cloud_dsn, "public.devices", ["id"],
                                       where_site="a")] == [1, 5]
    rows = dead_letter_rows(p)
    assert [(r[0], r[1], r[5] - r[4] + 1) for r in rows] == [("a", "pending", 2002)]
    execute(p.cloud_dsn, "ALTER TABLE public.devices DROP CONSTRAINT no_poison")
    code, out, err = cdc("replay", "--config", str(p.sink.config), "--dead-letters",
                         "--site", "a")
    assert code == 0, (out, err)
    p.assert_equal("a")
    p.stop()


def test_without_a_dead_letter_topic_the_site_stops_and_nothing_is_skipped(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory().start()
    a = p.site_dsn["a"]
    p.seed("INSERT INTO devices (id, name) VALUES (1, 'first')")
    execute(p.cloud_dsn, POISON)
    execute(a, "INSERT INTO devices (id, name) VALUES (2, 'poison')")
    execute(a, "INSERT INTO devices (id, name) VALUES (3, 'after')")
    p.sync("b")
    wait_until(lambda: count(p.cloud_dsn, "SELECT count(*) FROM tributary.site_status"
                                          " WHERE site_id = 'a' AND state = 'stopped'") == 1,
               TIMEOUT, "site a to stop", p.daemons)
    assert [int(r[0]) for r in rows_of(p.cloud_dsn, "public.devices", ["id"],
                                       where_site="a")] == [1]
    execute(p.cloud_dsn, "ALTER TABLE public.devices DROP CONSTRAINT no_poison")
    p.sink.stop()
    p.sink.start()  # a restart tries the site again: now it applies
    p.sync("a")
    p.assert_equal("a")
    p.stop()


def test_an_unreadable_change_record_sends_its_transaction_to_the_dead_letters(
        pipeline_factory: Callable[..., Pipeline], tmp_path: Path, unique_name) -> None:
    """A change record whose bytes do not decode (a copy of a real topic with one record's
    body cut): its transaction goes whole to the dead letters, the ones after it apply."""
    from cdc.core.wire.avro import read_fingerprint
    from cdc.runtime.schema_store import SchemaResolver

    p = pipeline_factory(sites=("a",)).start()
    a = p.site_dsn["a"]
    execute(a, "INSERT INTO devices (id, name) VALUES (1, 'one'), (2, 'two')")
    execute(a, "INSERT INTO devices (id, name) VALUES (3, 'three')")
    p.sync("a")
    p.stop()
    kafka = load_config(p.sink.config).kafka
    resolver = SchemaResolver(kafka)
    records = read_topic(p.kafka, kafka.site_topic("a"))

    def after_id(value: bytes | None) -> int | None:
        if value is None:
            return None
        codec = resolver.get(read_fingerprint(value))
        if codec.kind != "change":
            return None
        after = codec.decode_body(value)["after"]
        return None if after is None else after.get("id")

    at = next(i for i, (_, v) in enumerate(records) if after_id(v) == 2)
    key, value = records[at]
    assert value is not None
    records[at] = (key, value[:12])  # the header and the fingerprint; the body cut
    prefix = unique_name("dl")
    write_topic(p.kafka, f"{prefix}._schemas", read_topic(p.kafka, kafka.schema_topic))
    write_topic(p.kafka, f"{prefix}.a", records)
    cloud = p.clusters["cloud"].create_database(unique_name("cloud_dl"))
    config = cloud_config(tmp_path / "cloud-dl.toml", cloud, p.kafka, prefix,
                          unique_name("group"), f'dead_letter_topic = "{prefix}._dead_letters"')
    sink = Daemon("sink", config, tmp_path, "sink-dl").start()
    try:
        wait_until(lambda: count(cloud, "SELECT count(*) FROM public.sync_marker") == 1,
                   TIMEOUT, "the doctored topic to be applied", (sink,))
        assert [int(r[0]) for r in rows_of(cloud, "public.devices", ["id"])] == [3]
        with psycopg.connect(cloud) as conn:
            reasons = [r[0] for r in conn.execute("SELECT reason FROM tributary.dead_letters")]
        assert len(reasons) == 1 and "does not decode" in reasons[0], reasons
    finally:
        assert sink.stop() == 0
    assert rows_of(a, "public.devices", TABLES["public.devices"])  # the site is untouched
