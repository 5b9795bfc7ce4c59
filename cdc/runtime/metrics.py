"""Prometheus metrics of both daemons; the names are the contract with dashboards and alerts
(deploy/grafana, docs/operations.md).

Each daemon builds its own registry (a test may run several in one process). Figures that are
cheap to read where they live (lags, positions, queue length) are gauges set by the daemon's
loop or computed at scrape time; counters and histograms are updated as work is done.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: seconds: from sub-second apply batches to many-minute catch-ups
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900,
                   3600)


@dataclass
class SourceMetrics:
    registry: CollectorRegistry
    streaming: Gauge
    wal_lag_bytes: Gauge
    retained_wal_bytes: Gauge
    retained_wal_limit_bytes: Gauge
    over_limit: Gauge
    seconds_since_last_commit: Gauge
    confirmed_lsn: Gauge
    events: Counter
    transactions: Counter
    kafka_queue: Gauge
    delivery_errors: Counter


def source_metrics(site: str) -> SourceMetrics:
    r = CollectorRegistry()

    def gauge(name: str, doc: str) -> Gauge:
        return Gauge(name, doc, ["site"], registry=r)

    def counter(name: str, doc: str) -> Counter:
        return Counter(name, doc, ["site"], registry=r)

    m = SourceMetrics(
        registry=r,
        streaming=gauge("tributary_source_streaming", "1 while the source streams its slot"),
        wal_lag_bytes=gauge("tributary_source_wal_lag_bytes",
                            "WAL bytes between the server's current LSN and the slot's "
                            "confirmed LSN"),
        retained_wal_bytes=gauge("tributary_source_slot_retained_wal_bytes",
                                 "WAL bytes the slot keeps at the site (current LSN - "
                                 "restart_lsn)"),
        retained_wal_limit_bytes=gauge("tributary_source_slot_retained_wal_limit_bytes",
                                       "site.max_retained_wal_bytes"),
        over_limit=gauge("tributary_source_slot_over_limit",
                         "1 while the slot retains more WAL than site.max_retained_wal_bytes"),
        seconds_since_last_commit=gauge("tributary_source_seconds_since_last_commit",
                                        "seconds since the commit time of the last site "
                                        "transaction read from the slot (heartbeats included)"),
        confirmed_lsn=gauge("tributary_source_confirmed_lsn",
                            "the LSN confirmed to the slot (Kafka holds everything before it)"),
        events=counter("tributary_source_events",
                       "records produced to Kafka (change events, Begin/Commit, tombstones)"),
        transactions=counter("tributary_source_transactions", "site transactions produced"),
        kafka_queue=gauge("tributary_source_kafka_queue_messages",
                          "records waiting in the producer for Kafka's acknowledgement"),
        delivery_errors=counter("tributary_source_kafka_delivery_errors",
                                "records Kafka did not acknowledge (each restarts the stream)"),
    )
    for metric in (m.streaming, m.over_limit):
        metric.labels(site).set(0)
    for c in (m.events, m.transactions, m.delivery_errors):
        c.labels(site)  # present from the start: rate() needs the zero
    return m


#: the sink's operation label of each change op
OP_NAMES = {"c": "insert", "u": "update", "d": "delete", "t": "truncate", "r": "snapshot"}


@dataclass
class SinkMetrics:
    registry: CollectorRegistry
    consuming: Gauge
    last_applied_lsn: Gauge
    last_applied_commit_ts: Gauge
    lag_seconds: Gauge
    lag_bytes: Gauge
    site_stopped: Gauge
    consumer_lag: Gauge
    rows_applied: Counter
    dead_letters: Counter
    batch_seconds: Histogram
    end_to_end_seconds: Histogram


def sink_metrics() -> SinkMetrics:
    r = CollectorRegistry()
    return SinkMetrics(
        registry=r,
        consuming=Gauge("tributary_sink_consuming", "1 while the sink consumes its topics",
                        registry=r),
        last_applied_lsn=Gauge("tributary_sink_last_applied_lsn",
                               "commit LSN of the site's last transaction applied in the cloud",
                               ["site"], registry=r),
        last_applied_commit_ts=Gauge("tributary_sink_last_applied_commit_timestamp_seconds",
                                     "site commit time (Unix s) of the last transaction applied",
                                     ["site"], registry=r),
        lag_seconds=Gauge("tributary_sink_lag_seconds",
                          "now - site commit time of the last transaction applied (idle sites "
                          "stay fresh through heartbeats)", ["site"], registry=r),
        lag_bytes=Gauge("tributary_sink_lag_bytes",
                        "the site's WAL position (reported by its source every 5 s) - end LSN "
                        "of the last transaction applied", ["site"], registry=r),
        site_stopped=Gauge("tributary_sink_site_stopped",
                           "1 when the site's stream is stopped by an error (see the log)",
                           ["site"], registry=r),
        consumer_lag=Gauge("tributary_sink_consumer_lag_messages",
                           "records on the partition after the sink's applied offset",
                           ["topic", "partition"], registry=r),
        rows_applied=Counter("tributary_sink_rows_applied", "rows applied in the cloud",
                             ["site", "op"], registry=r),
        dead_letters=Counter("tributary_sink_dead_letters",
                             "site transactions sent to the dead-letter topic (cdc status counts "
                             "those not yet applied again)", ["site"], registry=r),
        batch_seconds=Histogram("tributary_sink_apply_batch_seconds",
                                "duration of one cloud apply transaction",
                                buckets=LATENCY_BUCKETS, registry=r),
        end_to_end_seconds=Histogram("tributary_sink_end_to_end_latency_seconds",
                                     "site commit -> cloud commit, per site transaction",
                                     buckets=LATENCY_BUCKETS, registry=r),
    )


def metric_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name a registry exposes (``_total``, ``_bucket``... included)."""
    return {s.name for family in registry.collect() for s in family.samples} | \
        {family.name for family in registry.collect()}
