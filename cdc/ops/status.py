"""``cdc status``: one line per site from the cloud's progress tables, or a site's slot.

Read-only: it needs no running daemon. The cloud's view comes from what the sink committed
(``tributary.sites``, ``tributary.offsets``, ``tributary.site_status``) and the topics' end
offsets; a site's view from ``pg_replication_slots`` and its snapshot progress.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

import psycopg

from cdc.core import ledger, site_ledger
from cdc.core.config import Config
from cdc.source.slot import slot_figures

T = TypeVar("T")

#: a site whose last applied transaction is older than this (heartbeats arrive every
#: site.heartbeat_interval_s) is shown as "lagging"
LAGGING_S = 60.0


@dataclass
class SiteLine:
    site: str
    state: str  # applying | lagging | stopped | no data
    last_commit_lsn: str | None
    last_commit_time: str | None
    lag_seconds: float | None
    lag_bytes: int | None  # the site's last reported WAL position - end of the last applied tx
    lag_records: int | None  # records on the site's topic after what the cloud applied
    error: str | None
    dead_letters: int = 0  # its transactions in the dead-letter topic, not applied again


def cloud_status(config: Config, now: datetime | None = None) -> list[SiteLine]:
    sink, kafka = config.need_sink(), config.kafka
    now = now or datetime.now(timezone.utc)
    with psycopg.connect(sink.dsn) as conn:
        try:
            sites = ledger.site_progress(conn)
            offsets = ledger.load_offsets(conn, sink.group_id)
        except psycopg.errors.UndefinedTable:
            return []
        conn.rollback()
        errors = _per_site(conn, ledger.stopped_sites)
        dead = _per_site(conn, ledger.pending_dead_letter_counts)
    ends = _topic_ends(config, [kafka.site_topic(s[0]) for s in sites])
    lines = []
    for site, lsn, ts, lag_bytes in sites:
        topic = kafka.site_topic(site)
        lag_s = max(0.0, (now - ts).total_seconds())
        end = ends.get(topic)
        applied = offsets.get((topic, 0))
        lag_records = None if end is None or applied is None else max(0, end - applied)
        error = errors.get(site)
        state = "stopped" if error else ("lagging" if lag_s > LAGGING_S else "applying")
        lines.append(SiteLine(site, state, lsn, ts.astimezone(timezone.utc).isoformat(),
                              round(lag_s, 1), None if lag_bytes is None else int(lag_bytes),
                              lag_records, error, dead.get(site, 0)))
    for site, error in errors.items():  # stopped before anything of it was applied
        if site not in {line.site for line in lines}:
            lines.append(SiteLine(site, "stopped", None, None, None, None, None, error,
                                  dead.get(site, 0)))
    return lines


def _per_site(conn: psycopg.Connection, read: Callable[[psycopg.Connection], dict[str, T]]
              ) -> dict[str, T]:
    """``site_id -> value`` from a progress table; none before the sink created it."""
    try:
        return read(conn)
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return {}


def _topic_ends(config: Config, topics: list[str]) -> dict[str, int]:
    """The end offset of partition 0 of each topic (site topics have one partition)."""
    if not topics:
        return {}
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from cdc.runtime.topics import client_config
    consumer = Consumer(client_config(config.kafka, **{"group.id": "tributary-status",
                                                       "enable.auto.commit": False}))
    out = {}
    try:
        for topic in topics:
            try:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)
            except KafkaException:
                continue
            out[topic] = int(high)
    finally:
        consumer.close()
    return out


@dataclass
class SlotLine:
    site: str
    slot: str
    exists: bool
    active: bool
    wal_status: str | None
    confirmed_lsn: str | None
    lag_bytes: int | None  # server WAL position - confirmed_flush_lsn
    retained_bytes: int | None  # server WAL position - restart_lsn
    retained_limit_bytes: int
    safe_wal_size: int | None  # bytes left before max_slot_wal_keep_size invalidates the slot
    snapshots: list[dict[str, Any]]


def site_status(config: Config) -> SlotLine:
    site = config.need_site()
    with psycopg.connect(site.dsn) as conn:
        slot = slot_figures(conn, site.slot_name)
        try:
            snaps = site_ledger.snapshots_not_done(conn, site.slot_name)
        except psycopg.errors.UndefinedTable:
            snaps = []
    if slot is None:
        return SlotLine(site.id, site.slot_name, False, False, None, None, None, None,
                        site.max_retained_wal_bytes, None, snaps)
    return SlotLine(site.id, site.slot_name, True, slot.active, slot.wal_status,
                    slot.confirmed_flush_lsn, slot.lag_bytes, slot.retained_bytes,
                    site.max_retained_wal_bytes, slot.safe_wal_size, snaps)


def render_cloud(lines: list[SiteLine], as_json: bool) -> str:
    if as_json:
        return json.dumps([asdict(line) for line in lines], indent=None)
    if not lines:
        return "no site has been applied in this cloud yet"
    head = f"{'SITE':<16} {'STATE':<9} {'LAST COMMIT LSN':<16} {'LAST COMMIT (UTC)':<26} " \
           f"{'LAG S':>8} {'LAG BYTES':>12} {'LAG RECORDS':>11} {'DEAD LETTERS':>12}  ERROR"
    rows = [head]
    for x in lines:
        rows.append(f"{x.site:<16} {x.state:<9} {x.last_commit_lsn or '-':<16} "
                    f"{(x.last_commit_time or '-')[:26]:<26} "
                    f"{'-' if x.lag_seconds is None else x.lag_seconds:>8} "
                    f"{'-' if x.lag_bytes is None else x.lag_bytes:>12} "
                    f"{'-' if x.lag_records is None else x.lag_records:>11} "
                    f"{x.dead_letters:>12}  {x.error or ''}")
    return "\n".join(rows)


def render_site(line: SlotLine, as_json: bool) -> str:
    if as_json:
        return json.dumps(asdict(line))
    if not line.exists:
        return (f"site {line.site}: slot {line.slot} does not exist (the source creates it at its "
                "first start)")
    over = line.retained_bytes is not None and line.retained_bytes > line.retained_limit_bytes
    out = [f"site {line.site}: slot {line.slot} {'active' if line.active else 'INACTIVE'}, "
           f"wal_status {line.wal_status}, confirmed {line.confirmed_lsn}, lag "
           f"{line.lag_bytes} bytes, retains {line.retained_bytes} bytes"
           f"{' (OVER the limit of %d)' % line.retained_limit_bytes if over else ''}"
           f"{'' if line.safe_wal_size is None else f', {line.safe_wal_size} bytes before invalidation'}"]
    if line.wal_status == "lost":
        out.append(f"  the slot was invalidated: changes were lost; drop it (SELECT "
                   f"pg_drop_replication_slot('{line.slot}')) and start the source again to "
                   "copy the site anew (docs/operations.md, 'Slot WAL growth')")
    for snap in line.snapshots:
        out.append(f"  snapshot {snap['table']}: {snap['mode']} {snap['state']}, "
                   f"{snap['rows']} rows copied")
    return "\n".join(out)
