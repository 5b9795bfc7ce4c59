"""Faults while the pipeline runs: the cloud still ends equal to every site.

Reduced form of the fault suite (issue 11): two sites under a mixed workload that includes
key-changing updates (of a plain table and of one whose TOASTed column stays unchanged, so the
update arrives without it), sources and sink killed with ``kill -9`` at random moments, starting
while the initial copy runs. A resumed copy reads rows in a newer state than the stream replays
over them; the cloud must converge to each site, never stop it.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Callable

import psycopg
import pytest

from cdc.core.config import load_config
from devenv.fault_check import AUDIT
from devenv.fault_workload import bump_versions, mixed, workloads
from devenv.pipeline import Daemon, cloud_config, count, execute, rows_of, wait_until
from tests.integration.sites import TABLES, TIMEOUT, Pipeline
from tests.integration.test_snapshot import progress

TIMEOUTS = 'config = { "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "1000" }'
SEED = [
    "INSERT INTO devices (id, name, firmware, installed) SELECT g, 'dev-' || g, 'v1',"
    " date '2024-01-01' + g % 1000 FROM generate_series(1, 200000) g",
    # 12 kB of hex per blob, stored out of line: updates that leave it alone do not send it
    "INSERT INTO settings SELECT 'k' || lpad(g::text, 5, '0'), 'value ' || g,"
    " (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 400) i)"
    " FROM generate_series(1, 1500) g",
]


def test_kill9_during_the_initial_copy_and_after_with_key_changes_converges(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(site_extra="snapshot_chunk_rows = 300",
                         kafka_extra=TIMEOUTS)  # a killed sink's partitions move on in 6 s
    for dsn in p.site_dsn.values():
        execute(dsn, *SEED)
    p.start(streaming=False)
    rnd = random.Random(11)
    wait_until(lambda: (progress(p.site_dsn["a"], "public.devices") or ("", 0))[1] > 0,
               TIMEOUT, "the initial copy to begin", p.daemons)
    kills = 0
    with workloads(p.site_dsn.values(), mixed, 3000):
        for _ in range(16):  # bounded: ~16 kills over ~30 s
            time.sleep(rnd.uniform(0.5, 2.5))
            victim = rnd.choice(p.daemons)
            if victim.alive():
                victim.kill9()
                kills += 1
            victim.start()
    assert kills >= 10
    for site, dsn in p.site_dsn.items():
        wait_until(lambda dsn=dsn: count(dsn, "SELECT count(*) FROM tributary.snapshot_progress"
                                              " WHERE state <> 'done'") == 0,
                   TIMEOUT * 3, f"the initial copy of site {site}", p.daemons)
        p.sync(site)
        for table, columns in TABLES.items():
            assert rows_of(p.cloud_dsn, table, columns, where_site=site) == \
                rows_of(dsn, table, columns), f"{table} of site {site} differs in the cloud"
    p.stop()


def test_two_sink_replicas_with_a_frozen_one_apply_each_transaction_once(
        pipeline_factory: Callable[..., Pipeline], tmp_path: Path) -> None:
    p = pipeline_factory(sites=("a", "b", "c"))
    for dsn in p.site_dsn.values():
        execute(dsn, "CREATE TABLE versioned (id int PRIMARY KEY, version bigint NOT NULL)",
                "INSERT INTO versioned SELECT g, 0 FROM generate_series(1, 200) g")
    group = load_config(p.sink.config).need_sink().group_id
    cloud_config(p.sink.config, p.cloud_dsn, p.kafka, p.prefix, group, kafka_extra=TIMEOUTS)
    second = Daemon("sink", cloud_config(tmp_path / "cloud-2.toml", p.cloud_dsn, p.kafka,
                                         p.prefix, group, kafka_extra=TIMEOUTS),
                    tmp_path, "sink-2")
    p.start()
    for site in p.site_dsn:
        p.sync(site)
    execute(p.cloud_dsn, *AUDIT)
    second.start()
    sinks = [p.sink, second]
    rnd = random.Random(5)
    with workloads(p.site_dsn.values(), bump_versions, 20000):
        for round_ in range(3):  # bounded: 3 rounds of ~20 s
            time.sleep(3)
            frozen = sinks[round_ % 2]
            frozen.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
            time.sleep(12)  # past session.timeout.ms: the group gives its partitions away
            frozen.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            time.sleep(3)
            victim = rnd.choice(sinks)
            victim.kill9()
            victim.start()
    for site in p.site_dsn:
        p.sync(site)
        assert rows_of(p.cloud_dsn, "public.versioned", ["id", "version"], where_site=site) == \
            rows_of(p.site_dsn[site], "public.versioned", ["id", "version"])
    with psycopg.connect(p.cloud_dsn) as conn:
        audit = dict(conn.execute("SELECT kind, count(*) FROM public.audit GROUP BY kind")
                     .fetchall())
    assert audit == {}, f"applies seen by the cloud trigger: {audit}"
    assert second.stop() == 0
    p.stop()


#: key moves of TOASTed rows (the blob left alone, so not sent) made while the initial copy
#: is down: rows it had copied move above its position (the resumed copy reads them at their
#: new key, then the replayed move must not stop on a duplicate key), and rows it had not
#: reached move below it (the resumed copy never reads them: the move must bring them whole)
KEY_MOVES = {
    "copied_rows_move_up":
        "UPDATE settings SET key = 'z' || key, value = 'moved' WHERE key <= 'k00100'",
    "uncopied_rows_move_down":
        "UPDATE settings SET key = 'a' || key, value = 'moved' WHERE key >= 'k09900'",
}


@pytest.mark.parametrize("move", list(KEY_MOVES))
def test_a_resumed_copy_then_replayed_key_moves_of_toasted_rows_converge(
        pipeline_factory: Callable[..., Pipeline], move: str) -> None:
    p = pipeline_factory(sites=("a",), site_extra="snapshot_chunk_rows = 20")
    a = p.site_dsn["a"]
    execute(a, "INSERT INTO settings SELECT 'k' || lpad(g::text, 5, '0'), 'value ' || g,"
               " (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 100) i)"
               " FROM generate_series(1, 10000) g")
    p.start(streaming=False)
    wait_until(lambda: (progress(a, "public.settings") or ("", 0))[1] >= 200, TIMEOUT,
               "the initial copy of settings to be under way", p.daemons)
    p.sources["a"].kill9()
    state, copied = progress(a, "public.settings")  # type: ignore[misc]
    assert state == "running" and copied < 9000, (state, copied)
    execute(a, KEY_MOVES[move])
    p.sources["a"].start()
    wait_until(lambda: (progress(a, "public.settings") or ("", 0))[0] == "done", TIMEOUT,
               "the initial copy to finish", p.daemons)
    p.sync("a")
    for table, columns in TABLES.items():
        assert rows_of(p.cloud_dsn, table, columns, where_site="a") == rows_of(a, table, columns)
    p.stop()


def read_messages(bootstrap: str, topic: str) -> list:
    """Every message of a one-partition topic, in order (bounded)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topic + "-copy",
                         "enable.auto.commit": False})
    out: list = []
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        consumer.assign([TopicPartition(topic, 0, 0)])
        for _ in range(high + 100):
            if len(out) >= high:
                break
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error():
                out.append(msg)
    finally:
        consumer.close()
    assert len(out) == high, (topic, len(out), high)
    return out


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of a one-partition topic, in order: (key, value)."""
    return [(m.key(), m.value()) for m in read_messages(bootstrap, topic)]


def write_topic(bootstrap: str, topic: str,
                records: list[tuple[bytes | None, bytes | None]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in records:
        producer.produce(topic, value, key, 0)
    assert producer.flush(30) == 0


def test_a_delivery_gap_never_applies_a_later_transaction_before_an_earlier_one(
        pipeline_factory: Callable[..., Pipeline], tmp_path: Path, unique_name) -> None:
    """A topic as librdkafka can leave it (DESIGN: "Delivery gaps"): transaction A cut short
    because its tail timed out, B delivered whole, then the source's next session with A and B
    again. Built from a real source's records (two sessions of one slot, the slot put back
    between them with pg_copy_logical_replication_slot); a fresh sink reads the doctored copy.
    Every row of A must reach the cloud."""
    from cdc.core.wire.avro import read_fingerprint
    from cdc.runtime.schema_store import SchemaResolver

    p = pipeline_factory(sites=("a",)).start()
    a = p.site_dsn["a"]
    slot = load_config(p.sources["a"].config).need_site().slot_name
    p.sync("a")
    assert p.sources["a"].stop() == 0
    execute(a, f"SELECT pg_copy_logical_replication_slot('{slot}', '{slot}_back')")
    with psycopg.connect(a) as conn:  # A: two changes; B: one
        conn.execute("INSERT INTO devices (id, name) VALUES (1001, 'a1'), (1002, 'a2')")
    execute(a, "INSERT INTO devices (id, name) VALUES (1003, 'b')")
    p.sources["a"].start()
    p.sync("a")
    assert p.sources["a"].stop() == 0
    execute(a, f"SELECT pg_drop_replication_slot('{slot}')",  # the slot as before A: sent again
            f"SELECT pg_copy_logical_replication_slot('{slot}_back', '{slot}')",
            f"SELECT pg_drop_replication_slot('{slot}_back')")
    p.sources["a"].start()
    p.sync("a")
    p.stop()

    kafka = load_config(p.sink.config).kafka
    resolver = SchemaResolver(kafka)
    records = read_topic(p.kafka, kafka.site_topic("a"))

    def kind(value: bytes | None) -> str:
        return "tombstone" if value is None else resolver.get(read_fingerprint(value)).kind

    def after_id(value: bytes) -> int | None:
        after = resolver.get(read_fingerprint(value)).decode_body(value)["after"]
        return None if after is None else after.get("id")

    # the first time A and B went out: A's Begin and first change stay, its tail is lost
    a_begin = next(i - 1 for i, (_, v) in enumerate(records)
                   if kind(v) == "change" and after_id(v) == 1001)
    b_begin = next(i - 1 for i, (_, v) in enumerate(records)
                   if kind(v) == "change" and after_id(v) == 1003)
    assert kind(records[a_begin][1]) == "begin" and kind(records[b_begin][1]) == "begin"
    gapped = records[:a_begin + 2] + records[b_begin:]
    assert len(gapped) < len(records)

    prefix = unique_name("gap")
    write_topic(p.kafka, f"{prefix}._schemas", read_topic(p.kafka, kafka.schema_topic))
    write_topic(p.kafka, f"{prefix}.a", gapped)
    cloud = p.clusters["cloud"].create_database(unique_name("cloud_gap"))
    sink = Daemon("sink", cloud_config(tmp_path / "cloud-gap.toml", cloud, p.kafka, prefix,
                                       unique_name("group")), tmp_path, "sink-gap").start()
    try:
        wait_until(lambda: count(cloud, "SELECT count(*) FROM public.sync_marker") == 3,
                   TIMEOUT, "the doctored topic to be applied", (sink,))
        assert rows_of(cloud, "public.devices", TABLES["public.devices"], where_site="a") == \
            rows_of(a, "public.devices", TABLES["public.devices"])
        assert "delivery gap" in sink.log()
    finally:
        sink.stop()


def test_records_deleted_by_retention_before_the_sink_read_them_stop_that_site(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    """The stored offset is gone from Kafka: the sink must not move past it silently."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    from tests.integration.test_operations import cdc

    p = pipeline_factory().start()
    a, b = p.site_dsn["a"], p.site_dsn["b"]
    p.sync("a")
    p.sync("b")
    assert p.sink.stop() == 0
    topic = load_config(p.sink.config).kafka.site_topic("a")
    before = read_topic(p.kafka, topic)
    execute(a, "INSERT INTO devices (id, name) SELECT g, 'lost' FROM generate_series(1, 50) g")
    wait_until(lambda: len(read_topic(p.kafka, topic)) > len(before) + 50, TIMEOUT,
               "the source to publish the inserts", tuple(p.sources.values()))
    high = len(read_topic(p.kafka, topic))
    # what retention does to records older than retention.ms: gone, the log starts later
    admin = AdminClient({"bootstrap.servers": p.kafka})
    for future in admin.delete_records([TopicPartition(topic, 0, high)]).values():
        future.result(timeout=30)
    execute(b, "INSERT INTO devices (id, name) VALUES (7, 'b goes on')")
    p.sink.start()
    p.sync("b")  # the other site flows
    wait_until(lambda: "site a stopped" in p.sink.log(), TIMEOUT, "site a to stop", p.daemons)
    assert "deleted (retention)" in p.sink.log()
    assert count(p.cloud_dsn, "SELECT count(*) FROM devices WHERE site_id = 'a' AND name = 'lost'"
                 ) == 0
    code, out, _ = cdc("status", "--config", str(p.sink.config))
    assert code == 1 and "retention" in out, out
    p.stop()


def test_a_bad_record_stops_its_own_site_and_garbage_in_the_schema_topic_stops_nobody(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    from cdc.core.wire.avro import Codec, control_schema
    from cdc.core.wire.model import CONTROL_KEY

    p = pipeline_factory().start()
    p.sync("a")
    p.sync("b")
    kafka = load_config(p.sink.config).kafka
    begin = Codec.of(control_schema("begin"))
    write_topic(p.kafka, kafka.schema_topic, [(b"junk", b"{not a schema"), (b"junk2", b"\x00\xff")])
    # a Begin whose body is cut off, on site a's topic
    write_topic(p.kafka, kafka.site_topic("a"), [(CONTROL_KEY, begin.header + b"\x02a\xff")])
    wait_until(lambda: "site a stopped" in p.sink.log(), TIMEOUT, "site a to stop", p.daemons)
    assert "does not decode" in p.sink.log()
    # site b goes on, and a new table (a schema the sink must read from the schema topic, past
    # the junk) arrives
    execute(p.site_dsn["b"], "CREATE TABLE fresh (id int PRIMARY KEY, v text)",
            "INSERT INTO fresh VALUES (1, 'after the junk')")
    execute(p.site_dsn["b"], "INSERT INTO devices (id, name) VALUES (77, 'b')")
    p.sync("b")
    wait_until(lambda: count(p.cloud_dsn, "SELECT count(*) FROM public.fresh") == 1, TIMEOUT,
               "site b's new table in the cloud", p.daemons)
    p.assert_equal("b")
    p.stop()


def test_a_slot_created_again_without_a_snapshot_stops_the_site(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    """snapshot = "never" and the slot dropped: the new one starts at the site's current WAL, so
    the changes made in between can never arrive. The site stops, saying so; never silence."""
    p = pipeline_factory(sites=("a",), site_extra='snapshot = "never"').start()
    a = p.site_dsn["a"]
    slot = load_config(p.sources["a"].config).need_site().slot_name
    p.sync("a")
    assert p.sources["a"].stop() == 0
    execute(a, "INSERT INTO devices (id, name) VALUES (1, 'never sent')",
            f"SELECT pg_drop_replication_slot('{slot}')")
    p.sources["a"].start()
    wait_until(lambda: count(a, "SELECT count(*) FROM pg_replication_slots WHERE active") == 1,
               TIMEOUT, "the new slot", p.daemons)
    execute(a, "INSERT INTO devices (id, name) VALUES (2, 'after the new slot')")
    wait_until(lambda: "site a stopped" in p.sink.log(), TIMEOUT, "site a to stop", p.daemons)
    assert "was created again" in p.sink.log()
    assert rows_of(p.cloud_dsn, "public.devices", ["id"], where_site="a") == []  # not row 2
    p.stop()


def test_a_replay_after_the_slot_changed_does_not_apply_the_old_slots_transactions_again(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    """site.slot changed (a new identity, LSNs compared afresh), then `cdc replay
    --from-beginning`: the first slot's transactions are read again and must be skipped, not
    applied over the newer rows."""
    from tests.integration.test_operations import cdc

    p = pipeline_factory(sites=("a",)).start()
    a = p.site_dsn["a"]
    execute(a, "INSERT INTO devices (id, name) VALUES (1, 'v1')",
            "UPDATE devices SET name = 'v2' WHERE id = 1")
    p.sync("a")
    assert p.sources["a"].stop() == 0
    config = p.sources["a"].config
    old_slot = load_config(config).need_site().slot_name
    config.write_text(config.read_text().replace(f'slot = "{old_slot}"',
                                                 f'slot = "{old_slot}_2"'))
    execute(a, f"SELECT pg_drop_replication_slot('{old_slot}')")
    p.sources["a"].start()  # a new slot: its initial copy, then the stream
    p.sync("a")
    execute(a, "UPDATE devices SET name = 'v3' WHERE id = 1")
    p.sync("a")
    assert p.sink.stop() == 0
    xmin = "SELECT xmin::text FROM devices WHERE site_id = 'a' AND id = 1"
    with psycopg.connect(p.cloud_dsn) as conn:
        before = conn.execute(xmin).fetchone()
    code, out, err = cdc("replay", "--config", str(p.sink.config), "--site", "a",
                         "--from-beginning")
    assert code == 0, (out, err)
    p.sink.start()
    p.sync("a")
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "name"], where_site="a") == \
        [("1", "v3")]
    with psycopg.connect(p.cloud_dsn) as conn:  # skipped, not applied again (and again)
        assert conn.execute(xmin).fetchone() == before
    p.stop()


def test_two_sink_replicas_share_the_sites(pipeline_factory: Callable[..., Pipeline],
                                           tmp_path: Path) -> None:
    """Each site topic has one partition; the group spreads the sites over the replicas (the
    range assignor gave every partition 0 to one member, the other idled)."""
    p = pipeline_factory(sites=("a", "b"))
    group = load_config(p.sink.config).need_sink().group_id
    second = Daemon("sink", cloud_config(tmp_path / "cloud-2.toml", p.cloud_dsn, p.kafka,
                                         p.prefix, group), tmp_path, "sink-2")
    p.start()
    second.start()
    try:
        check_shared(p, second)
    finally:
        if second.alive():
            second.proc.kill()  # type: ignore[union-attr]
            second.proc.wait(10)  # type: ignore[union-attr]
    p.stop()


def check_shared(p: Pipeline, second: Daemon) -> None:
    """Each replica holds one site (from their logs' assignments); the cloud equals both."""
    import json

    def held(d: Daemon) -> set[str]:
        """The topics of the replica's current assignment, from its log."""
        topics: set[str] = set()
        for line in d.log_path.read_text(errors="replace").splitlines():
            rec = json.loads(line) if line.startswith("{") else {}
            if rec.get("msg") in ("partitions revoked", "partitions lost"):
                topics = set()
            elif rec.get("msg") == "assigned":
                topics.add(rec["topic"])
        return topics

    def spread() -> bool:
        mine, theirs = held(p.sink), held(second)
        return len(mine) == 1 and len(theirs) == 1 and mine != theirs

    for site in p.site_dsn:
        execute(p.site_dsn[site], "INSERT INTO devices (id, name) VALUES (1, 'x')")
    wait_until(spread, TIMEOUT, "each replica to hold one site", (*p.daemons, second))
    for site in p.site_dsn:
        p.sync(site)
        p.assert_equal(site)
    assert second.stop() == 0


def test_a_session_ending_with_whole_transactions_unapplied_starts_again(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    """The sink's session ends on an error while whole transactions it read still wait to be
    applied (here a failpoint after the first change of the last one, all read in one turn).
    Closing the consumer revokes the partitions, and the revoke hands those transactions to
    the apply worker, which has already ended: the sink must start a new session and apply
    everything, not wait for that worker forever."""
    from cdc.core.wire.model import CONTROL_KEY, POSITION_KEY

    p = pipeline_factory(sites=("a",))
    a = p.site_dsn["a"]
    p.sources["a"].start()
    wait_until(lambda: count(a, "SELECT count(*) FROM pg_replication_slots WHERE active") == 1,
               TIMEOUT, "the slot of site a to be active", p.daemons)
    for i in range(3):
        execute(a, f"INSERT INTO devices (id, name) VALUES ({i}, 'device {i}')")
    topic = load_config(p.sink.config).kafka.site_topic("a")

    def changes() -> list[int]:
        return [i for i, (key, _) in enumerate(read_topic(p.kafka, topic))
                if key not in (CONTROL_KEY, POSITION_KEY)]

    wait_until(lambda: len(changes()) >= 3, TIMEOUT, "the three transactions in Kafka",
               p.daemons)
    last = changes()[-1]  # its offset: the failpoint counts every record the sink reads
    p.sink.start(env={"TRIBUTARY_FAILPOINTS": f"sink.after_ingest=error@{last + 1}"})
    wait_until(lambda: "failpoint sink.after_ingest" in p.sink.log(), TIMEOUT,
               "the failpoint to fire", p.daemons)
    p.sync("a")
    assert rows_of(p.cloud_dsn, "public.devices", ["id", "name"], where_site="a") == \
        rows_of(a, "public.devices", ["id", "name"])
    p.stop()
