"""The HTTP endpoint the probes and Prometheus use, on a real socket."""

from __future__ import annotations

import urllib.error
import urllib.request

from cdc.runtime.health import Health, MetricsServer
from cdc.runtime.metrics import metric_names, sink_metrics, source_metrics


def fetch(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_probes_follow_the_daemon_state_and_metrics_are_served() -> None:
    m = sink_metrics()
    health = Health(stall_s=60)
    scraped = []
    server = MetricsServer("127.0.0.1", 0, m.registry, health,
                           on_scrape=lambda: scraped.append(1)).start()
    try:
        assert fetch(server.port, "/healthz") == (200, "ok\n")
        assert fetch(server.port, "/readyz") == (503, "not ready: starting\n")
        health.set_ready(True)
        assert fetch(server.port, "/readyz") == (200, "ready\n")
        health.stall_s = 0.0  # the main loop has not turned since: a wedged process
        assert fetch(server.port, "/healthz")[0] == 503
        m.rows_applied.labels("plant-1", "insert").inc(3)
        status, text = fetch(server.port, "/metrics")
        assert status == 200 and scraped
        assert 'tributary_sink_rows_applied_total{op="insert",site="plant-1"} 3.0' in text
        assert fetch(server.port, "/other")[0] == 404
    finally:
        server.close()


def test_both_registries_expose_the_documented_names() -> None:
    src = metric_names(source_metrics("a").registry)
    assert {"tributary_source_events_total", "tributary_source_slot_retained_wal_bytes",
            "tributary_source_wal_lag_bytes", "tributary_source_slot_over_limit"} <= src
    sink = metric_names(sink_metrics().registry)
    assert {"tributary_sink_end_to_end_latency_seconds_bucket", "tributary_sink_lag_seconds",
            "tributary_sink_apply_batch_seconds_bucket", "tributary_sink_consumer_lag_messages"} \
        <= sink
