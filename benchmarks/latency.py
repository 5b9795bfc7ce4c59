"""End-to-end latency under a steady load: site commit -> cloud commit, two sites, one sink.

    python -m benchmarks.latency                       # 10,000 rows/s over 2 sites for 60 s
    python -m benchmarks.latency --rate 10000 --seconds 60 --tx-rows 100 --sites 2

DESIGN's target: p99 of site commit -> cloud commit < 250 ms at 10,000 rows/s offered by two
sites. One run starts ``--sites`` site PostgreSQL clusters, a cloud cluster and a Kafka broker in
a temp dir, one ``cdc source run`` per site and one ``cdc sink run`` (with its /metrics endpoint
on), then writes ``--rate`` rows/s in total, split evenly over the sites, in transactions of
``--tx-rows`` rows, paced by the wall clock, for ``--seconds``.

The latency is the sink's own histogram ``tributary_sink_end_to_end_latency_seconds`` (one
observation per site transaction: cloud commit time - site commit time). It is scraped after the
warm-up (the first ``--warmup`` seconds of load) and again once the sink has applied everything
(a marker row per site); the difference of the two scrapes is the measured window. Percentiles
are interpolated linearly inside the histogram's buckets. This is a measurement, not a test: it
prints figures and fails only when something breaks. It writes
``bench-results/latency-<timestamp>.json``; everything it starts is stopped and its temp dir
removed, also on errors and Ctrl-C. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import (BenchBase, BenchError, Child, git_describe, process_cpu_s,
                                run_bench, say, tree_cpu_s, vm_hwm_mb, wait_until)
from cdc.core.config import SinkConfig
from devenv import pipeline
from devenv.kafka import KAFKA_VERSION, ensure_kafka
from devenv.ports import free_port
from devenv.postgres import PgCluster, ensure_postgres_installed


DATABASE = "bench"
TOPIC_PREFIX = "lat"
GROUP = "bench-latency"
DEVICES = 1000
HISTOGRAM = "tributary_sink_end_to_end_latency_seconds"
BATCH_HISTOGRAM = "tributary_sink_apply_batch_seconds"
TARGET_S = 0.25
TARGET_QUANTILE = 0.99
START_TIMEOUT_S = 180.0
PROGRESS_EVERY_S = 10.0

SITE_DDL = [
    "CREATE TABLE public.readings (device_id int NOT NULL, ts timestamptz NOT NULL,"
    " value double precision, PRIMARY KEY (device_id, ts))",
    pipeline.MARKER_DDL,
]
# Rows i..j of one site: device i % 1000 + 1, one reading per device and second.
INSERT_SQL = f"""
INSERT INTO public.readings (device_id, ts, value)
SELECT i %% {DEVICES} + 1,
       timestamptz '2025-01-01 00:00:00+00' + (i / {DEVICES}) * interval '1 second',
       20 + 5 * sin(i)
FROM generate_series(%s::bigint, %s::bigint) AS i
"""


# ------------------------------------------------------------------------------ the histogram

Scrape = tuple[dict[float, float], float, float]


def scrape(url: str) -> dict[str, Scrape]:
    """Per histogram name (end-to-end latency, apply batch duration): (cumulative bucket
    counts by upper bound, _count, _sum)."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, Scrape] = {}
    for family in text_string_to_metric_families(text):
        name = family.name
        if name not in (HISTOGRAM, BATCH_HISTOGRAM):
            continue
        buckets: dict[float, float] = {}
        count = total = 0.0
        for s in family.samples:
            if s.name == f"{name}_bucket":
                buckets[float(s.labels["le"])] = s.value
            elif s.name == f"{name}_count":
                count = s.value
            elif s.name == f"{name}_sum":
                total = s.value
        out[name] = (buckets, count, total)
    if not out.get(HISTOGRAM, ({},))[0]:
        raise BenchError(f"{url} has no {HISTOGRAM}")
    return out


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Like PromQL's histogram_quantile: linear interpolation inside the bucket that holds the
    q-th observation (the first bucket starts at 0). inf when it falls in the +Inf bucket."""
    n = buckets[-1][1]
    if n <= 0:
        return None
    rank = q * n
    lower, below = 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if le == float("inf"):
                return float("inf")
            inside = cum - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, cum
    return float("inf")


def latency_figures(before: Scrape, after: Scrape) -> dict[str, Any]:
    """The window between two scrapes: count, mean, share within the target, percentiles."""
    b0, c0, s0 = before
    b1, c1, s1 = after
    buckets = [(le, b1[le] - b0.get(le, 0.0)) for le in sorted(b1)]
    n = c1 - c0
    within = dict(buckets).get(TARGET_S)
    fig: dict[str, Any] = {
        "transactions": int(n),
        "mean_s": round((s1 - s0) / n, 4) if n else None,
        "fraction_le_250ms": round(within / n, 5) if n and within is not None else None,
        "buckets": {("+Inf" if le == float("inf") else f"{le:g}"): int(cum)
                    for le, cum in buckets},
    }
    for q in (0.5, 0.95, 0.99):
        v = quantile(q, buckets)
        fig[f"p{round(q * 100)}_s"] = None if v is None else (
            "inf" if v == float("inf") else round(v, 4))
    frac = fig["fraction_le_250ms"]
    fig["p99_below_250ms"] = None if frac is None else frac >= TARGET_QUANTILE
    return fig


# ------------------------------------------------------------------------------- the writers

class Writer(threading.Thread):
    """One site's load: a transaction of ``tx_rows`` rows every 1/tx_per_s seconds.

    Open loop: transaction k is due at start + k / tx_per_s; a writer that falls behind writes
    the next one at once (it does not skip), and its delay is recorded.
    """

    def __init__(self, site: str, dsn: str, tx_rows: int, tx_per_s: float, start_at: float,
                 seconds: float, sync_commit: str, stop: threading.Event) -> None:
        super().__init__(name=f"writer-{site}", daemon=True)
        self.site, self.dsn, self.tx_rows, self.tx_per_s = site, dsn, tx_rows, tx_per_s
        self.start_at, self.seconds, self.sync_commit, self.stop = start_at, seconds, sync_commit, stop
        self.done: list[tuple[float, int]] = []  # (monotonic time the COMMIT returned, rows)
        self.max_late_s = 0.0
        self.commit_s: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(f"SET synchronous_commit = {self.sync_commit}")
                next_row = 0
                k = 0
                while not self.stop.is_set():
                    due = self.start_at + k / self.tx_per_s
                    if due >= self.start_at + self.seconds:
                        break
                    now = time.monotonic()
                    if due > now:
                        self.stop.wait(due - now)
                        if self.stop.is_set():
                            break
                    else:
                        self.max_late_s = max(self.max_late_s, now - due)
                    t0 = time.monotonic()
                    conn.execute(INSERT_SQL, (next_row, next_row + self.tx_rows - 1))
                    t1 = time.monotonic()
                    self.commit_s.append(t1 - t0)
                    self.done.append((t1, self.tx_rows))
                    next_row += self.tx_rows
                    k += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    def rows_between(self, t0: float, t1: float) -> tuple[int, int]:
        """(transactions, rows) whose COMMIT returned in [t0, t1)."""
        sel = [r for t, r in self.done if t0 <= t < t1]
        return len(sel), sum(sel)


# ------------------------------------------------------------------------------------ the run

class LatencyBench(BenchBase):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, "tributary-latency-")
        self.stop_writers = threading.Event()
        self.writers: list[Writer] = []
        self.site_ids = [f"site{i + 1}" for i in range(args.sites)]
        self.sites: dict[str, PgCluster] = {}
        self.site_dsn: dict[str, str] = {}
        self.sources: dict[str, Child] = {}
        self.results: dict[str, Any] = {}

    # -- plumbing -----------------------------------------------------------------------------
    def daemon(self, kind: str, name: str, config: Path) -> Child:
        return super().daemon(kind, name, config).start()

    def check_daemons(self) -> None:
        for c in self.children:
            if c.poll() is not None:
                raise BenchError(f"{c.name} exited with code {c.returncode}; its log "
                                 f"({c.log_path}) ends:\n{c.log_tail()}")

    def cleanup(self) -> None:
        self.stop_writers.set()
        for w in self.writers:
            w.join(10)
        super().cleanup()

    # -- setup --------------------------------------------------------------------------------
    def start_servers(self) -> None:
        say(f"starting {len(self.site_ids)} site clusters, a cloud cluster and a Kafka broker "
            f"in {self.tmp}")
        bindir = ensure_postgres_installed()
        libs = ensure_kafka()
        for site in self.site_ids:
            self.sites[site] = self.cluster(site, bindir)
        self.cloud = self.cluster("cloud", bindir)
        self.broker = self.kafka(libs)
        for site, cluster in self.sites.items():
            dsn = cluster.create_database(DATABASE)
            pipeline.execute(dsn, *SITE_DDL)
            self.site_dsn[site] = dsn
        self.cloud_dsn = self.cloud.create_database(DATABASE)
        with psycopg.connect(self.cloud_dsn) as conn:
            self.results["postgres_version"] = conn.execute("SHOW server_version").fetchone()[0]
            self.results["postgres_settings"] = dict(conn.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name IN"
                " ('shared_buffers', 'synchronous_commit', 'fsync', 'full_page_writes',"
                " 'wal_writer_delay', 'autovacuum') ORDER BY 1").fetchall())

    def start_daemons(self) -> None:
        kafka = self.broker.bootstrap_servers
        self.metrics_port = free_port()
        cfg = pipeline.cloud_config(self.tmp / "cloud.toml", self.cloud_dsn, kafka,
                                    TOPIC_PREFIX, GROUP)
        with open(cfg, "a") as f:
            f.write(f'\n[metrics]\nhost = "127.0.0.1"\nport = {self.metrics_port}\n')
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}"
        for site in self.site_ids:
            site_cfg = pipeline.site_config(self.tmp / f"{site}.toml", site, self.site_dsn[site],
                                            kafka, TOPIC_PREFIX, slot=f"lat_{site}")
            self.sources[site] = self.daemon("source", f"source-{site}", site_cfg)
        self.sink = self.daemon("sink", "sink", cfg)
        say("waiting for the sources' slots to be active and the sink's /readyz...")
        for site, dsn in self.site_dsn.items():
            with psycopg.connect(dsn, autocommit=True) as conn:
                wait_until(lambda conn=conn: conn.execute(
                    "SELECT count(*) FROM pg_replication_slots WHERE active").fetchone()[0] == 1,
                    START_TIMEOUT_S, f"the slot of {site} to be active", self.sources[site])
        wait_until(self.sink_ready, START_TIMEOUT_S, "the sink's /readyz to answer 200",
                   self.sink)
        # one marker per site through the whole pipeline: topics exist, the sink is assigned
        for site in self.site_ids:
            self.sync(site)
        say("pipeline is up: a marker row of every site reached the cloud")

    def sink_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.metrics_url}/readyz", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def sync(self, site: str) -> None:
        try:
            pipeline.sync(self.site_dsn[site], self.cloud_dsn, site, self.args.timeout)
        except AssertionError as exc:
            self.check_daemons()
            raise BenchError(f"{exc}; the sink's log ends:\n{self.sink.log_tail()}") from None

    # -- the load -----------------------------------------------------------------------------
    def cpu_snapshot(self) -> dict[str, float | None]:
        snap: dict[str, float | None] = {"sink": process_cpu_s(self.sink.pid),
                                         "cloud_postgres": tree_cpu_s(self.cloud.pid),
                                         "kafka": tree_cpu_s(self.broker.pid)}
        for site in self.site_ids:
            snap[f"source_{site}"] = process_cpu_s(self.sources[site].pid)
            snap[f"postgres_{site}"] = tree_cpu_s(self.sites[site].pid)
        return snap

    def load(self) -> None:
        a = self.args
        per_site = a.rate / a.sites
        tx_per_s = per_site / a.tx_rows
        say(f"offering {a.rate:,} rows/s for {a.seconds:.0f} s: {per_site:,.0f} rows/s per site "
            f"in {tx_per_s:g} transactions/s of {a.tx_rows} rows (synchronous_commit = "
            f"{a.synchronous_commit}); the first {a.warmup:.0f} s are warm-up")
        start_at = time.monotonic() + 0.5
        for site in self.site_ids:
            w = Writer(site, self.site_dsn[site], a.tx_rows, tx_per_s, start_at, a.seconds,
                       a.synchronous_commit, self.stop_writers)
            self.writers.append(w)
            w.start()
        window_at = start_at + a.warmup
        self.t_start = start_at
        scraped = False
        next_report = start_at + PROGRESS_EVERY_S
        while any(w.is_alive() for w in self.writers):
            time.sleep(0.05)
            for w in self.writers:
                if w.error is not None:
                    raise BenchError(f"the writer of {w.site} failed: {w.error!r}")
            self.check_daemons()
            now = time.monotonic()
            if not scraped and now >= window_at:
                self.scrape0 = scrape(f"{self.metrics_url}/metrics")
                self.cpu0 = self.cpu_snapshot()
                self.t_window = time.monotonic()
                scraped = True
                say(f"  warm-up over: {int(self.scrape0[HISTOGRAM][1]):,} transactions observed so far; "
                    "measuring from here")
            if now >= next_report:
                rows = sum(sum(r for _, r in w.done) for w in self.writers)
                late = max(w.max_late_s for w in self.writers)
                say(f"  {now - start_at:4.0f} s: {rows:,} rows committed at the sites "
                    f"(max writer delay {late * 1000:.0f} ms)")
                next_report += PROGRESS_EVERY_S
        for w in self.writers:
            if w.error is not None:
                raise BenchError(f"the writer of {w.site} failed: {w.error!r}")
        if not scraped:
            raise BenchError("the load ended before the warm-up did (--seconds <= --warmup?)")
        self.t_end = max(t for w in self.writers for t, _ in w.done)
        self.cpu1 = self.cpu_snapshot()
        say("load done; waiting for the sink to apply everything (a marker row per site)...")
        t0 = time.monotonic()
        for site in self.site_ids:
            self.sync(site)
        self.catch_up_s = time.monotonic() - t0
        time.sleep(1.0)  # the sink observes a batch's latencies just after its cloud commit
        self.scrape1 = scrape(f"{self.metrics_url}/metrics")
        self.peak_rss = {"sink": vm_hwm_mb(self.sink.pid),
                         **{f"source_{s}": vm_hwm_mb(c.pid) for s, c in self.sources.items()}}
        for c in self.children:
            rc = c.stop(60)
            if rc != 0:
                raise BenchError(f"{c.name} exited with {rc} on SIGTERM:\n{c.log_tail()}")

    # -- the whole run ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        a = self.args
        r = self.results
        r["started_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        r["parameters"] = {"rate_rows_per_s": a.rate, "seconds": a.seconds, "warmup_s": a.warmup,
                           "tx_rows": a.tx_rows, "sites": a.sites,
                           "synchronous_commit": a.synchronous_commit,
                           "sink_batch_max_ms": SinkConfig.model_fields["batch_max_ms"].default,
                           "target": "p99 < 250 ms"}
        r["machine"] = {"cores": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
                        "python": platform.python_version(), "platform": platform.platform(),
                        "kafka_version": KAFKA_VERSION, "git": git_describe()}
        self.start_servers()
        self.start_daemons()
        self.load()
        r["machine"]["loadavg_at_end"] = os.getloadavg()
        window = self.t_end - self.t_window
        sites = {}
        for w in self.writers:
            tx_all, rows_all = w.rows_between(self.t_start, float("inf"))
            tx_win, rows_win = w.rows_between(self.t_window, float("inf"))
            commits = sorted(w.commit_s)
            sites[w.site] = {
                "transactions": tx_all, "rows": rows_all,
                "rows_per_s": round(rows_all / max(1e-9, self.t_end - self.t_start)),
                "window_transactions": tx_win, "window_rows": rows_win,
                "window_rows_per_s": round(rows_win / max(1e-9, window)),
                "max_writer_delay_s": round(w.max_late_s, 3),
                "insert_commit_s_p50": round(commits[len(commits) // 2], 4) if commits else None,
                "insert_commit_s_max": round(commits[-1], 4) if commits else None}
        r["load"] = {
            "seconds": round(self.t_end - self.t_start, 2), "window_s": round(window, 2),
            "rows_per_s": sum(s["rows_per_s"] for s in sites.values()),
            "window_rows_per_s": round(sum(s["window_rows"] for s in sites.values()) / window),
            "window_transactions": sum(s["window_transactions"] for s in sites.values()),
            "sites": sites, "catch_up_s": round(self.catch_up_s, 2)}
        r["latency"] = latency_figures(self.scrape0[HISTOGRAM], self.scrape1[HISTOGRAM])
        if BATCH_HISTOGRAM in self.scrape0 and BATCH_HISTOGRAM in self.scrape1:
            b = latency_figures(self.scrape0[BATCH_HISTOGRAM], self.scrape1[BATCH_HISTOGRAM])
            r["apply_batches"] = {"batches": b["transactions"], "mean_s": b["mean_s"],
                                  "per_s": round(b["transactions"] / window, 2),
                                  "p99_s": b["p99_s"], "buckets": b["buckets"]}
        cpu = {k: (None if v is None or self.cpu0.get(k) is None else round(v - self.cpu0[k], 2))
               for k, v in self.cpu1.items()}
        r["cpu_s_in_window"] = cpu
        r["peak_rss_mb"] = {k: (round(v, 1) if v else None) for k, v in self.peak_rss.items()}
        return r


# ------------------------------------------------------------------------------------ report

def render(r: dict[str, Any]) -> str:
    p, m, ld, lat = r["parameters"], r["machine"], r["load"], r["latency"]
    cpu, rss = r["cpu_s_in_window"], r["peak_rss_mb"]
    win = ld["window_s"]

    def s(v: Any) -> str:
        if v is None:
            return "-"
        if v == "inf":
            return "> 3600 s"
        return f"{v * 1000:.0f} ms"

    def c(key: str) -> str:
        v = cpu.get(key)
        return "-" if v is None else f"{v:.1f} s ({100 * v / win:.0f}% of a core)"

    out = [f"Tributary end-to-end latency  {r['started_at']}  (git {m['git']})",
           f"offered {p['rate_rows_per_s']:,} rows/s by {p['sites']} sites in transactions of "
           f"{p['tx_rows']} rows for {p['seconds']:.0f} s (warm-up {p['warmup_s']:.0f} s "
           f"excluded); site synchronous_commit = {p['synchronous_commit']}",
           f"PostgreSQL {r.get('postgres_version')}, Kafka {m['kafka_version']}, Python "
           f"{m['python']}; {m['cores']} cores; load avg {m['loadavg_at_start'][0]:.2f} -> "
           f"{m['loadavg_at_end'][0]:.2f}", ""]
    rows = [
        ("achieved offered rate, whole run", f"{ld['rows_per_s']:,} rows/s"),
        ("achieved offered rate, measured window",
         f"{ld['window_rows_per_s']:,} rows/s over {win:.1f} s"),
        ("site transactions in the window (writers)", f"{ld['window_transactions']:,}"),
        ("transactions observed by the sink", f"{lat['transactions']:,}"),
        ("share <= 250 ms (target: >= 99%)",
         "-" if lat["fraction_le_250ms"] is None else f"{100 * lat['fraction_le_250ms']:.2f}%"),
        ("p99 < 250 ms", {True: "yes", False: "NO", None: "-"}[lat["p99_below_250ms"]]),
        ("p50 / p95 / p99 (bucket-interpolated)",
         f"{s(lat['p50_s'])} / {s(lat['p95_s'])} / {s(lat['p99_s'])}"),
        ("mean (exact)", s(lat["mean_s"])),
        ("sink apply batches: per s / mean / p99 duration",
         "-" if "apply_batches" not in r else f"{r['apply_batches']['per_s']:.1f} / "
         f"{s(r['apply_batches']['mean_s'])} / {s(r['apply_batches']['p99_s'])}"),
        ("catch-up after the load (marker per site)", f"{ld['catch_up_s']:.1f} s"),
        ("max writer delay behind schedule",
         f"{max(x['max_writer_delay_s'] for x in ld['sites'].values()) * 1000:.0f} ms"),
        ("sink: peak RSS / CPU in window", f"{rss.get('sink') or 0:.0f} MB / {c('sink')}"),
    ]
    for site in ld["sites"]:
        rows.append((f"source {site}: peak RSS / CPU in window",
                     f"{rss.get(f'source_{site}') or 0:.0f} MB / {c(f'source_{site}')}"))
    rows.append(("CPU in window: cloud pg / kafka", f"{c('cloud_postgres')} / {c('kafka')}"))
    rows.append(("CPU in window: site pg (each)", " / ".join(
        c(f"postgres_{site}") for site in ld["sites"])))
    width = max(len(k) for k, _ in rows)
    out += [f"{k:<{width}}  {v}" for k, v in rows]
    out.append("")
    out.append("latency buckets in the window (le: cumulative count): " + ", ".join(
        f"{le}: {n:,}" for le, n in lat["buckets"].items() if le in
        ("0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf")))
    return "\n".join(out)


# -------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.latency",
        description="End-to-end latency (site commit -> cloud commit) under a steady load "
                    "offered by several sites (see benchmarks/README.md).")
    ap.add_argument("--rate", type=int, default=10_000,
                    help="rows/s offered in total, split evenly over the sites (default 10,000)")
    ap.add_argument("--seconds", type=float, default=60, help="load duration (default 60)")
    ap.add_argument("--tx-rows", type=int, default=100,
                    help="rows per site transaction (default 100)")
    ap.add_argument("--sites", type=int, default=2, help="site clusters (default 2)")
    ap.add_argument("--warmup", type=float, default=10,
                    help="first seconds of load left out of the figures (default 10)")
    ap.add_argument("--synchronous-commit", choices=("on", "off"), default="on",
                    help="the writers' synchronous_commit (default on, PostgreSQL's default; "
                         "devenv's clusters otherwise use off)")
    ap.add_argument("--timeout", type=float, default=300,
                    help="seconds the sink may take to catch up after the load (default 300)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temp dir (data dirs, daemon logs) for inspection")
    args = ap.parse_args(argv)
    if args.rate < 1 or args.tx_rows < 1 or args.sites < 1 or args.seconds <= 0:
        ap.error("--rate, --tx-rows, --sites and --seconds must be positive")
    if args.seconds <= args.warmup:
        ap.error("--seconds must be longer than --warmup")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_args(argv), LatencyBench, "latency", render)


if __name__ == "__main__":
    sys.exit(main())
