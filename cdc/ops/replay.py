"""``cdc replay``: rewind the sink to a time or an offset, for all sites or chosen ones.

The sink resumes from ``tributary.offsets`` in the cloud database, so a rewind is an update
there, made while no sink of the group runs (the group's members are asked from Kafka; a
running sink would overwrite the offsets with its own at its next commit). By default the
re-read transactions stay skipped, as the sink skips any transaction at or below a site's
applied commit LSN: the replay re-reads, it changes nothing (exactly once). ``--reapply``
records in ``tributary.replays`` that transactions up to the site's applied commit LSN apply
again (only the chosen tables' changes with ``--table``), to repair a damaged cloud table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from cdc.core import ledger
from cdc.core.config import Config
from cdc.core.errors import TributaryError
from cdc.core.lsn import format_lsn


class ReplayRefused(TributaryError):
    """A replay that cannot be done safely now (a sink runs, a site or offset is unknown)."""


@dataclass
class ReplayPlan:
    site: str
    topic: str
    partition: int
    current_offset: int | None  # where the sink resumes now (None: never consumed)
    target_offset: int
    end_offset: int
    applied_lsn: int | None  # the site's last applied commit LSN (the --reapply bound)

    @property
    def records(self) -> int:
        """Records read again (or for the first time) from the target to the end."""
        return max(0, self.end_offset - self.target_offset)


def running_members(config: Config) -> int:
    """Members of the sink's consumer group: running sinks."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    from cdc.runtime.topics import client_config
    group = config.need_sink().group_id
    admin = AdminClient(client_config(config.kafka))
    future = admin.describe_consumer_groups([group], request_timeout=10)[group]
    desc = future.result(timeout=15)
    if desc.state in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
        return 0
    return len(desc.members)


def plan(config: Config, sites: list[str], to_time: datetime | None,
         to_offset: int | None) -> list[ReplayPlan]:
    """What a rewind would do, per site topic (partition 0: a site topic has one)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from cdc.runtime.topics import client_config
    sink, kafka = config.need_sink(), config.kafka
    with psycopg.connect(sink.dsn) as conn:
        with conn.transaction():
            ledger.ensure_schema(conn)
        offsets = ledger.load_offsets(conn, sink.group_id)
        applied = ledger.load_sites(conn)
    known = sorted({kafka.site_of_topic(t) for t, _ in offsets} | set(applied))
    known = [s for s in known if s]
    chosen = sites or known
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise ReplayRefused(f"site(s) {', '.join(unknown)} unknown to sink group "
                            f"{sink.group_id} (known: {', '.join(known) or 'none'})")
    consumer = Consumer(client_config(kafka, **{"group.id": sink.group_id + "-replay-plan",
                                                "enable.auto.commit": False}))
    plans = []
    try:
        for site in chosen:
            topic = kafka.site_topic(site)
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
                if to_time is not None:
                    found = consumer.offsets_for_times(
                        [TopicPartition(topic, 0, int(to_time.timestamp() * 1000))], timeout=10)
                    target = found[0].offset if found[0].offset >= 0 else high
                else:
                    target = to_offset if to_offset is not None else low
            except KafkaException as exc:
                raise ReplayRefused(f"topic {topic}: {exc}") from exc
            if not low <= target <= high:
                raise ReplayRefused(f"topic {topic}: offset {target} is outside what Kafka holds "
                                    f"({low}..{high})")
            tx = applied.get(site)
            plans.append(ReplayPlan(site, topic, 0, offsets.get((topic, 0)), target, high,
                                    tx.commit_lsn if tx else None))
    finally:
        consumer.close()
    return plans


def apply(config: Config, plans: list[ReplayPlan], reapply: bool,
          tables: list[str]) -> None:
    """Move the sink's offsets (and with ``reapply``, record what applies again), in one cloud
    transaction."""
    sink = config.need_sink()
    with psycopg.connect(sink.dsn) as conn:
        with conn.transaction():
            for p in plans:
                ledger.save_offset(conn, sink.group_id, p.topic, p.partition, p.target_offset)
                if reapply and p.applied_lsn is not None:
                    ledger.request_replay(conn, p.site, p.applied_lsn, tables)


def describe(plans: list[ReplayPlan], reapply: bool, tables: list[str]) -> str:
    what = ("applied again" + (f" (tables {', '.join(tables)} only)" if tables else "")
            if reapply else "read again and skipped (already applied; --reapply to apply again)")
    lines = [f"{'SITE':<16} {'TOPIC':<32} {'FROM OFFSET':>11} {'TO OFFSET':>10} {'END':>10} "
             f"{'RECORDS':>9}  UP TO APPLIED LSN"]
    for p in plans:
        lines.append(f"{p.site:<16} {p.topic:<32} "
                     f"{'-' if p.current_offset is None else p.current_offset:>11} "
                     f"{p.target_offset:>10} {p.end_offset:>10} {p.records:>9}  "
                     f"{format_lsn(p.applied_lsn) if p.applied_lsn is not None else '-'}")
    lines.append(f"transactions up to each site's applied LSN are {what}; later ones apply "
                 "as usual")
    return "\n".join(lines)
