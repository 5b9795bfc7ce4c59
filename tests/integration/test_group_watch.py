"""A sink replica kept outside its consumer group while site topics wait replaces its consumer.

The fault suite (reduced form, seed 11) saw both sink replicas leave the group when a frozen
broker was fenced and its group coordinator resigned and came back, and never join again:
nothing reached the cloud for minutes. That race cannot be forced here; what can is a consumer
held outside its group: a member of the group that stops polling holds every rebalance (the
coordinator waits for it up to its max.poll.interval.ms). The sink must notice from librdkafka's
own statistics and replace its consumer, and leave an idle replica (a member without a
partition, more replicas than sites) alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from cdc.core.config import load_config
from devenv.pipeline import Daemon, cloud_config, execute, wait_until
from tests.integration.sites import TIMEOUT, Pipeline

GROUP = 'config = { "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "1000" }'
STUCK_AFTER = "group_stuck_after_s = 10"
REPLACED = "replacing it with a new consumer"


def test_a_sink_held_outside_its_group_replaces_its_consumer_an_idle_replica_stays(
        pipeline_factory: Callable[..., Pipeline], tmp_path: Path) -> None:
    from confluent_kafka import Consumer

    p = pipeline_factory(sites=("a",), sink_extra=STUCK_AFTER, kafka_extra=GROUP)
    group = load_config(p.sink.config).need_sink().group_id
    second = Daemon("sink", cloud_config(tmp_path / "cloud-2.toml", p.cloud_dsn, p.kafka, p.prefix,
                                         group, STUCK_AFTER, GROUP), tmp_path, "sink-2")
    blocker: Any = None
    p.start()
    try:
        execute(p.site_dsn["a"], "INSERT INTO devices (id, name) VALUES (1, 'one')")
        p.sync("a")
        # one site, two replicas: one of them is a member without a partition, for longer than
        # group_stuck_after_s; that is no reason to replace anything
        second.start()
        time.sleep(20)
        for d in (p.sink, second):
            assert REPLACED not in d.log_path.read_text(), f"{d.name} replaced an idle consumer"
        execute(p.site_dsn["a"], "INSERT INTO devices (id, name) VALUES (2, 'two')")
        p.sync("a")

        # a member that stops polling: the next rebalance waits for it
        held: list[int] = []
        blocker = Consumer({"bootstrap.servers": p.kafka, "group.id": group,
                            "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
                            "max.poll.interval.ms": 300000, "enable.auto.commit": False,
                            "partition.assignment.strategy": "roundrobin,range"})
        blocker.subscribe([f"^{p.prefix}\\..*"],
                          on_assign=lambda c, parts: held.append(len(parts)),
                          on_revoke=lambda c, parts: None)
        deadline = time.monotonic() + TIMEOUT
        while not held and time.monotonic() < deadline:
            blocker.poll(0.2)
        assert held, "the blocking member never joined the group"
        assert second.stop() == 0  # it leaves: a rebalance the blocker now holds
        execute(p.site_dsn["a"], "INSERT INTO devices (id, name) VALUES (3, 'three')")
        wait_until(lambda: REPLACED in p.sink.log_path.read_text(), 60,
                   "the sink to replace a consumer held outside its group", p.daemons)
        line = next(l for l in p.sink.log_path.read_text().splitlines() if REPLACED in l)
        assert group in line and f"{p.prefix}.a" in line, line  # names the group and the topic

        blocker.close()  # the rebalance completes; the sink's consumer is a member again
        blocker = None
        p.sync("a")
        p.assert_equal("a")
    finally:
        if blocker is not None:
            blocker.close()
        if second.alive():
            second.proc.kill()  # type: ignore[union-attr]
            second.proc.wait(10)  # type: ignore[union-attr]
    p.stop()
