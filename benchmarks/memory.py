"""Peak memory of each daemon: the source and the sink must stay under 300 MB whatever the load.

    python -m benchmarks.pipeline --memory     # (or scripts/bench --memory)

Two workloads, each on fresh servers (the pipeline benchmark's setup, benchmarks/pipeline.py):

- one transaction of 1,000,000 rows;
- a burst of 100,000 one-row transactions, committed by one server-side loop at the site (a
  ``DO`` block that commits after every row: as fast as the site can commit).

Each is written while no daemon runs (a backlog: the most the daemons can be handed at once),
then drained by ``cdc source run`` until the slot confirms the last commit, then applied by
``cdc sink run`` until the cloud holds it (and the cloud rows are checked against the site's).
The figure of each daemon is its VmHWM (peak resident set size, /proc/<pid>/status) read just
before it is stopped. The baselines (pg_recvlogical, COPY) and the upsert run are skipped.
What bounds each figure: benchmarks/README.md ("Memory").
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg

from benchmarks.harness import git_describe, say
from benchmarks.pipeline import DEVICES, Bench

LIMIT_MB = 300  # the target (README, "Measuring"): source and sink each < 300 MB peak


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    rows: int
    tx_size: int


WORKLOADS = (
    Workload("one_transaction", "one 1,000,000-row transaction", 1_000_000, 1_000_000),
    Workload("burst", "100,000 one-row transactions", 100_000, 1),
)

# Row i exactly as benchmarks.pipeline.INSERT_SQL writes it, one transaction per row.
BURST_SQL = f"""
DO $$
BEGIN
  FOR i IN 0..{{last}} LOOP
    INSERT INTO public.readings (device_id, ts, value, quality, note)
    VALUES (i % {DEVICES} + 1,
            timestamptz '2025-01-01 00:00:00+00' + (i / {DEVICES}) * interval '1 second',
            20 + 5 * sin(i), (i % 4)::smallint,
            CASE WHEN i % 4 = 0 THEN 'sensor recalibrated, batch ' || (i / {DEVICES}) END);
    COMMIT;
  END LOOP;
END $$"""


class WorkloadBench(Bench):
    """The pipeline benchmark reduced to the two daemons' drains of one workload."""

    def __init__(self, args: argparse.Namespace, workload: Workload) -> None:
        own = argparse.Namespace(**vars(args))
        own.rows, own.tx_size = workload.rows, workload.tx_size
        own.one_transaction = workload.tx_size >= workload.rows
        own.profile = False
        super().__init__(own)
        self.workload = workload

    def load_before_last(self, conn: psycopg.Connection) -> int:
        """One-row transactions: all but the last in one server-side loop (the last goes the
        usual way, which notes its xid and WAL position for the end LSN)."""
        if self.tx_size != 1 or self.rows < 2:
            return 0
        conn.execute(BURST_SQL.format(last=self.rows - 2).encode())
        return self.rows - 1

    def run(self) -> dict[str, Any]:
        say(f"workload: {self.workload.label}")
        self.results["parameters"] = {"rows": self.rows, "tx_size": self.tx_size}
        self.start_servers()
        self.prepare_site()
        self.load()
        self.settle_site()
        self.source()
        self.sink("sink", "bench-sink")
        return self.results


class MemoryCheck:
    """Runs the workloads one after the other, each on its own servers (``run_bench`` API)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.current: WorkloadBench | None = None

    def run(self) -> dict[str, Any]:
        results: dict[str, Any] = {
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git": git_describe(), "limit_mb": LIMIT_MB, "workloads": {}}
        for workload in WORKLOADS:
            self.current = WorkloadBench(self.args, workload)
            try:
                figures = self.current.run()
            finally:
                self.current.cleanup()
            phases = figures["phases"]
            results["workloads"][workload.key] = {
                "label": workload.label, "rows": workload.rows,
                "transactions": figures["backlog"]["transactions"],
                "load_s": figures["load"]["seconds"],
                "source": _daemon(phases["source"]), "sink": _daemon(phases["sink"])}
            self.current = None
        return results

    def cleanup(self) -> None:
        if self.current is not None:
            self.current.cleanup()

    def server_log_tails(self) -> None:
        if self.current is not None:
            self.current.server_log_tails()


def _daemon(phase: dict[str, Any]) -> dict[str, Any]:
    return {"peak_rss_mb": phase["peak_rss_mb"], "seconds": phase["seconds"],
            "rows_per_s": phase["rows_per_s"]}


def render(r: dict[str, Any]) -> str:
    out = [f"Tributary memory check  {r['started_at']}  (git {r['git']})", ""]
    head = f"{'workload':<34} {'transactions':>12} {'process':>8} {'peak RSS MB':>12} {'seconds':>8}"
    out += [head, "-" * len(head)]
    over = []
    for w in r["workloads"].values():
        for i, name in enumerate(("source", "sink")):
            d = w[name]
            mb = d["peak_rss_mb"]
            if mb is None or mb >= r["limit_mb"]:
                over.append(f"{name} ({w['label']})")
            first = (w["label"], f"{w['transactions']:,}") if i == 0 else ("", "")
            shown = f"{mb:.0f}" if mb is not None else "?"
            out.append(f"{first[0]:<34} {first[1]:>12} {name:>8} {shown:>12} "
                       f"{d['seconds']:>8.1f}")
    out.append("")
    out.append("peak RSS = VmHWM of the daemon process (/proc/<pid>/status), read at the end of "
               "its drain")
    out.append(f"target: each process under {r['limit_mb']} MB: "
               + ("met" if not over else "NOT MET by " + ", ".join(over)))
    return "\n".join(out)
