"""The fault suite: the whole pipeline under injected faults, then: is every site whole in the cloud?

    python -m devenv.faults                 # at least 100 faults (scripts/faults)
    python -m devenv.faults --quick         # about a dozen, a few minutes (CI)
    python -m devenv.faults --seed 7 --faults 30 --keep

It starts its own servers in a temp dir: PostgreSQL clusters for two sites and the cloud, a
Kafka broker (its own, so it may kill and freeze it) with one listener per site advertised at a
TCP proxy, a proxy in front of the cloud database for the sinks, two sources and two sink
replicas in one consumer group (session.timeout.ms 6000). While the sites run the fault
workload (:mod:`devenv.fault_workload`), it injects faults one after another, chosen and timed
by a seeded RNG (:data:`KINDS`); after each it commits a marker row at every site and times how
long the cloud takes to have it (recovery). At the end it waits for the pipeline to catch up
and runs the checker (:mod:`devenv.fault_check`).

Prints faults by kind, recovery time (p50, max), the four counts per site and table, peak RSS
of each process (VmHWM, max over its restarts), the largest slot lag seen; writes the figures to
``bench-results/faults-<timestamp>.json``. Exit 0 only when every count is 0, every fault
recovered and no daemon stopped on an error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import psycopg

from devenv.fault_check import AUDIT, CLOUD_VERSIONED, TableCounts, check, report
from devenv.fault_workload import (
    SCHEMA, VERSIONED_ROWS, SiteWorkload, fault_suite_workload, seed,
)
from devenv.kafka import KafkaBroker, ensure_kafka
from devenv.pipeline import Daemon, cloud_config, count, execute, site_config
from devenv.ports import free_port
from devenv.postgres import PgCluster, ensure_postgres_installed
from devenv.tcp_proxy import TcpProxy

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench-results"
SITES = ("a", "b")
PREFIX = "faults"
SESSION_TIMEOUT_MS = 6000
#: the sources give up on a message after this long (a frozen broker outlasts it)
MESSAGE_TIMEOUT_MS = 10000
BATCH_MAX_CHANGES = 2000  # smaller than the workload's large transactions: applied in parts

KINDS = (
    "kill9_source", "kill9_sink", "freeze_sink", "kill_broker", "freeze_broker",
    "crash_site_pg", "crash_cloud_pg", "cut_site_kafka", "cut_cloud", "failpoint_source",
    "failpoint_sink",
)


class FaultSuiteError(RuntimeError):
    """The fault suite could not set up or tear down its servers."""


@dataclass
class Options:
    faults: int = 100
    seed: int = 1
    quick: bool = False
    devices: int = 60000
    settings: int = 1500
    recovery_timeout: float = 240.0
    base_dir: Path | None = None
    keep: bool = False
    kafka_libs: Path | None = None
    pg_bindir: Path | None = None
    results_dir: Path | None = RESULTS_DIR
    out: Callable[[str], None] = field(default=lambda line: print(line, flush=True))

    @classmethod
    def quick_form(cls, **kw: Any) -> "Options":
        return cls(**{"faults": 12, "quick": True, "devices": 20000, "settings": 400, **kw})


@dataclass
class Fault:
    kind: str
    target: str
    detail: str = ""
    held_s: float = 0.0
    recovery_s: float | None = None  # None: the marker did not reach the cloud in time
    note: str = ""


@dataclass
class Outcome:
    """What a run found; ``ok`` is the exit status."""

    faults: list[Fault]
    counts: list[TableCounts]
    peak_rss_kb: dict[str, int]
    max_slot_lag_bytes: dict[str, int]
    unexpected_exits: list[str]
    stopped_sites: list[str]
    workload: dict[str, int]
    seconds: float
    recovered_at_end: bool

    @property
    def ok(self) -> bool:
        return (self.recovered_at_end and all(c.ok for c in self.counts)
                and all(f.recovery_s is not None for f in self.faults)
                and not self.unexpected_exits and not self.stopped_sites)

    def as_dict(self) -> dict[str, Any]:
        rec = [f.recovery_s for f in self.faults if f.recovery_s is not None]
        return {
            "ok": self.ok, "seconds": round(self.seconds, 1),
            "faults_by_kind": dict(Counter(f.kind for f in self.faults)),
            "recovery_s": {"p50": _p50(rec), "max": round(max(rec), 2) if rec else None,
                           "not_recovered": sum(f.recovery_s is None for f in self.faults)},
            "faults": [asdict(f) for f in self.faults],
            "counts": [c.as_dict() for c in self.counts],
            "peak_rss_kb": self.peak_rss_kb, "max_slot_lag_bytes": self.max_slot_lag_bytes,
            "unexpected_exits": self.unexpected_exits, "stopped_sites": self.stopped_sites,
            "workload": self.workload, "recovered_at_end": self.recovered_at_end,
        }


def _p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def _vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class Environment:
    """The servers, proxies and daemons of one run, all under ``base``."""

    def __init__(self, base: Path, opts: Options) -> None:
        self.base, self.opts = base, opts
        bindir = opts.pg_bindir or ensure_postgres_installed()
        libs = opts.kafka_libs or ensure_kafka()
        self.clusters = {name: PgCluster(name, base / "pg", bindir=bindir)
                         for name in (*(f"site_{s}" for s in SITES), "cloud")}
        self.kafka_proxy_ports = {s: free_port() for s in SITES}
        self.broker = KafkaBroker(base / "kafka", libs=libs, extra_listeners={
            f"SITE_{s.upper()}": port for s, port in self.kafka_proxy_ports.items()})
        self.kafka_proxies: dict[str, TcpProxy] = {}
        self.cloud_proxy: TcpProxy | None = None
        self.site_dsn: dict[str, str] = {}
        self.cloud_dsn = ""
        self.sources: dict[str, Daemon] = {}
        self.sinks: list[Daemon] = []
        self.logs = base / "logs"

    @property
    def daemons(self) -> list[Daemon]:
        return [*self.sources.values(), *self.sinks]

    def start_servers(self) -> None:
        for cluster in self.clusters.values():
            cluster.start()
        self.broker.start(timeout=120)
        for s, port in self.kafka_proxy_ports.items():
            self.kafka_proxies[s] = TcpProxy(self.broker.listener_port(f"SITE_{s.upper()}"),
                                             port=port, name=f"kafka-{s}").start()
        self.cloud_proxy = TcpProxy(self.clusters["cloud"].port, name="cloud").start()

    def prepare(self) -> None:
        """Site schemas and rows, the cloud's audited table, configs, daemons (not started)."""
        opts = self.opts
        self.logs.mkdir(parents=True, exist_ok=True)
        for s in SITES:
            dsn = self.clusters[f"site_{s}"].create_database("factory")
            execute(dsn, *SCHEMA, *seed(opts.devices, opts.settings))
            self.site_dsn[s] = dsn
        self.cloud_dsn = self.clusters["cloud"].create_database("fleet")
        execute(self.cloud_dsn, CLOUD_VERSIONED, *AUDIT)
        kafka_config = (f'config = {{ "message.timeout.ms" = "{MESSAGE_TIMEOUT_MS}",'
                        f' "socket.keepalive.enable" = "true" }}')
        for s in SITES:
            cfg = site_config(self.base / f"site-{s}.toml", s, self.site_dsn[s],
                              self.kafka_proxies[s].address, PREFIX, kafka_extra=kafka_config,
                              site_extra="snapshot_chunk_rows = 1000\nheartbeat_interval_s = 2")
            self.sources[s] = Daemon("source", cfg, self.logs, f"source-{s}")
        cloud = self.clusters["cloud"]
        proxied = f"host=127.0.0.1 port={self.cloud_proxy.port} user=postgres dbname=fleet"  # type: ignore[union-attr]
        assert cloud.port != self.cloud_proxy.port  # type: ignore[union-attr]
        group_config = (f'config = {{ "session.timeout.ms" = "{SESSION_TIMEOUT_MS}",'
                        f' "heartbeat.interval.ms" = "1000" }}')
        for i in (1, 2):
            cfg = cloud_config(self.base / f"cloud-{i}.toml", proxied, self.broker.bootstrap_servers,
                               PREFIX, "faults-sink", extra=f"batch_max_changes = {BATCH_MAX_CHANGES}",
                               kafka_extra=group_config)
            self.sinks.append(Daemon("sink", cfg, self.logs, f"sink-{i}"))

    def stop(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for d in self.daemons:
            if d.proc is not None and d.proc.poll() is None:
                try:
                    os.kill(d.proc.pid, signal.SIGCONT)
                    codes[d.name] = d.stop(30)
                except (AssertionError, ProcessLookupError):
                    codes[d.name] = None
        for proxy in [*self.kafka_proxies.values(), self.cloud_proxy]:
            if proxy is not None:
                proxy.restore()
                proxy.close()
        if self.broker.pid is not None:
            os.kill(self.broker.pid, signal.SIGCONT)
        self.broker.stop(timeout=20)
        for cluster in self.clusters.values():
            cluster.stop("immediate", timeout=20)
        return codes


class Monitor(threading.Thread):
    """Samples, every half second, each process's peak RSS and each site's slot lag."""

    def __init__(self, env: Environment) -> None:
        super().__init__(name="fault-monitor", daemon=True)
        self.env = env
        self.peak_kb: dict[str, int] = {}
        self.slot_lag: dict[str, int] = {s: 0 for s in SITES}
        self.halt = threading.Event()
        self._conns: dict[str, psycopg.Connection | None] = {s: None for s in SITES}

    def sample(self) -> None:
        pids = {d.name: d.proc.pid for d in self.env.daemons
                if d.proc is not None and d.proc.poll() is None}
        if self.env.broker.pid is not None:
            pids["kafka-broker"] = self.env.broker.pid
        for name, pid in pids.items():
            kb = _vm_hwm_kb(pid)
            if kb is not None:
                self.peak_kb[name] = max(self.peak_kb.get(name, 0), kb)
        for s in SITES:
            try:
                conn = self._conns[s]
                if conn is None or conn.closed:
                    conn = self._conns[s] = psycopg.connect(self.env.site_dsn[s], autocommit=True,
                                                            connect_timeout=2)
                row = conn.execute("SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(),"
                                   " confirmed_flush_lsn))::bigint FROM pg_replication_slots"
                                   " WHERE database = current_database()").fetchone()
                if row and row[0] is not None:
                    self.slot_lag[s] = max(self.slot_lag[s], int(row[0]))
            except psycopg.Error:
                self._conns[s] = None  # the site is down: try again next time

    def run(self) -> None:
        while not self.halt.wait(0.5):
            self.sample()
        for conn in self._conns.values():
            if conn is not None:
                conn.close()


class Injector:
    """Injects one fault of a kind and returns when it is over (everything restored)."""

    def __init__(self, env: Environment, monitor: Monitor, rnd: random.Random, quick: bool) -> None:
        self.env, self.monitor, self.rnd, self.quick = env, monitor, rnd, quick

    def inject(self, kind: str) -> Fault:
        return getattr(self, kind)()

    def _hold(self, low: float, high: float) -> float:
        held = self.rnd.uniform(low, high)
        time.sleep(held)
        return held

    def _kill9(self, d: Daemon) -> None:
        self.monitor.sample()  # its peak RSS, before the process is gone
        if d.proc is not None and d.proc.poll() is None:
            d.kill9()

    def kill9_source(self) -> Fault:
        s = self.rnd.choice(SITES)
        d = self.env.sources[s]
        self._kill9(d)
        held = self._hold(0.1, 2)
        d.start()
        return Fault("kill9_source", d.name, held_s=held)

    def kill9_sink(self) -> Fault:
        d = self.rnd.choice(self.env.sinks)
        self._kill9(d)
        held = self._hold(0.1, 2)
        d.start()
        return Fault("kill9_sink", d.name, held_s=held)

    def freeze_sink(self) -> Fault:
        d = self.rnd.choice(self.env.sinks)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGSTOP)
        try:  # past session.timeout.ms: the group gives its partitions to the other replica
            held = self._hold(SESSION_TIMEOUT_MS / 1000 + 2, SESSION_TIMEOUT_MS / 1000 + 6)
        finally:
            d.proc.send_signal(signal.SIGCONT)
        return Fault("freeze_sink", d.name, held_s=held)

    def kill_broker(self) -> Fault:
        self.monitor.sample()
        self.env.broker.kill9()
        held = self._hold(0.5, 4)
        self.env.broker.start(timeout=120)
        return Fault("kill_broker", "kafka", held_s=held)

    def freeze_broker(self) -> Fault:
        pid = self.env.broker.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:  # past the sources' message.timeout.ms: their queued records time out
            held = self._hold(MESSAGE_TIMEOUT_MS / 1000 + 2, MESSAGE_TIMEOUT_MS / 1000 + 5)
        finally:
            os.kill(pid, signal.SIGCONT)
        return Fault("freeze_broker", "kafka", held_s=held)

    def crash_site_pg(self) -> Fault:
        s = self.rnd.choice(SITES)
        cluster = self.env.clusters[f"site_{s}"]
        cluster.stop("immediate", timeout=30)
        held = self._hold(0.5, 3)
        cluster.start(timeout=120)
        return Fault("crash_site_pg", f"site_{s}", held_s=held)

    def crash_cloud_pg(self) -> Fault:
        cluster = self.env.clusters["cloud"]
        cluster.stop("immediate", timeout=30)
        held = self._hold(0.5, 3)
        cluster.start(timeout=120)
        return Fault("crash_cloud_pg", "cloud", held_s=held)

    def cut_site_kafka(self) -> Fault:
        s = self.rnd.choice(SITES)
        mode = self.rnd.choice(["reset", "blackhole"])
        proxy = self.env.kafka_proxies[s]
        proxy.cut(mode)
        try:
            held = self._hold(3, 8) if self.quick else self._hold(3, 20)
        finally:
            proxy.restore()
        return Fault("cut_site_kafka", f"site_{s}", detail=mode, held_s=held)

    def cut_cloud(self) -> Fault:
        proxy = self.env.cloud_proxy
        assert proxy is not None
        # reset: connections fail at once, the sinks retry with backoff (the full form holds
        # some for minutes); blackhole: statements hang until the network is back (no
        # statement timeout in the sink's DSN), then carry on
        mode = self.rnd.choice(["reset", "reset", "blackhole"])
        proxy.cut(mode)
        try:
            if mode == "blackhole" or self.quick:
                held = self._hold(5, 15)
            else:
                held = self._hold(5, self.rnd.choice([20, 130]))
        finally:
            proxy.restore()
        return Fault("cut_cloud", "cloud", detail=mode, held_s=held)

    def failpoint_source(self) -> Fault:
        s = self.rnd.choice(SITES)
        dsn = self.env.site_dsn[s]
        deadline = time.monotonic() + 15
        while _copy_state(dsn) == "unplanned" and time.monotonic() < deadline:
            time.sleep(0.2)  # the source has not planned its initial copy yet
        copying = _copy_state(dsn) == "copying"
        choices = [f"source.after_produce=crash@{self.rnd.randint(1, 40)}",
                   f"source.mid_transaction=crash@{self.rnd.randint(20, 3000)}",
                   f"source.after_produce=error@{self.rnd.randint(1, 40)}"]
        if copying:
            choices = [f"initial_copy.in_chunk=crash@{self.rnd.randint(1, 3000)}",
                       f"initial_copy.read=crash@{self.rnd.randint(1, 5)}"]
        return self._with_failpoint(self.env.sources[s], self.rnd.choice(choices),
                                    "failpoint_source")

    def failpoint_sink(self) -> Fault:
        i = self.rnd.randrange(2)
        d, other = self.env.sinks[i], self.env.sinks[1 - i]
        spec = self.rnd.choice([
            f"sink.after_cloud_commit=crash@{self.rnd.randint(1, 30)}",
            f"sink.after_cloud_commit=error@{self.rnd.randint(1, 30)}",
            f"sink.in_copy=crash@{self.rnd.randint(1, 40)}",
            f"sink.apply_part=crash@{self.rnd.randint(1, 3)}",
            "sink.on_assign=crash@1",
            f"sink.on_revoke=crash@{self.rnd.randint(1, 2)}",
            "sink.on_assign=sleep:8@2",
        ])
        # a revoke needs a rebalance: the other replica leaves and comes back meanwhile
        poke = other if spec.startswith("sink.on_revoke") else None
        return self._with_failpoint(d, spec, "failpoint_sink", poke)

    def _with_failpoint(self, d: Daemon, spec: str, kind: str, poke: Daemon | None = None) -> Fault:
        """Restart ``d`` with the failpoint armed, wait (bounded) until it fires, then run it
        without. A failpoint that did not fire in time is noted, not counted as a failure."""
        self._kill9(d)
        started = time.monotonic()
        d.start(env={"TRIBUTARY_FAILPOINTS": spec,
                     "TRIBUTARY_FAILPOINTS_SEED": str(self.rnd.randrange(1 << 30))})
        if poke is not None:
            time.sleep(3)
            self._kill9(poke)
            poke.start()
        assert d.proc is not None
        crash = "=crash" in spec  # error and sleep never end the process: run armed a while
        deadline = started + ((20 if self.quick else 40) if crash else 15)
        while time.monotonic() < deadline and d.proc.poll() is None:
            self.monitor.sample()
            time.sleep(0.2)
        code = d.proc.poll()
        if crash:
            note = {None: "did not fire in time", 137: "crashed there"}.get(code, f"exited {code}")
        else:
            note = "ran armed" if code is None else f"exited {code}"
        if code is None:
            self._kill9(d)
        if code not in (None, 137):  # an error failpoint is retried, never an exit
            note += " (UNEXPECTED)"
        d.start()
        return Fault(kind, d.name, detail=spec, held_s=time.monotonic() - started, note=note)


def _markers(env: Environment, timeout: float) -> float | None:
    """Commit a marker at every site; seconds until the cloud holds all of them (None: not
    within ``timeout``)."""
    started = time.monotonic()
    deadline = started + timeout
    pending: dict[str, str] = {}
    for s, dsn in env.site_dsn.items():
        marker = os.urandom(8).hex()
        while True:  # the site may still be recovering
            try:
                execute(dsn, "INSERT INTO public.sync_marker VALUES (%s)", params=(marker,))
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.3)
        pending[s] = marker
    while pending and time.monotonic() < deadline:
        for s, marker in list(pending.items()):
            try:
                if count(env.cloud_dsn, "SELECT count(*) FROM public.sync_marker WHERE site_id = %s"
                                        " AND id = %s", (s, marker)) == 1:
                    del pending[s]
            except psycopg.OperationalError:
                pass
        if pending:
            time.sleep(0.2)
    return None if pending else time.monotonic() - started


def _unexpected_exits(env: Environment) -> list[str]:
    """Daemons that exited by themselves (an error they cannot retry): restarted, and named."""
    found = []
    for d in env.daemons:
        if d.proc is not None and d.proc.poll() is not None:
            tail = [ln for ln in d.log().splitlines() if '"ERROR"' in ln or "Traceback" in ln][-3:]
            found.append(f"{d.name} exited with {d.proc.returncode}: {' | '.join(tail)}")
            d.start()
    return found


def _stopped_sites(env: Environment) -> list[str]:
    """Lines where a sink stopped a site (it stays stopped until the sink restarts)."""
    lines = []
    for d in env.sinks:
        try:
            text = d.log_path.read_text(errors="replace")
        except OSError:
            continue
        lines += [f"{d.name}: {ln[:400]}" for ln in text.splitlines()
                  if re.search(r"site \S+ stopped: ", ln)]
    return lines


def _copy_state(dsn: str) -> str:
    """The site's initial copy: unplanned (no progress rows yet), copying or done."""
    row = count(dsn, "SELECT CASE WHEN count(*) = 0 THEN -1 ELSE count(*) FILTER (WHERE state"
                     " <> 'done') END FROM tributary.snapshot_progress")
    return "unplanned" if row < 0 else "copying" if row > 0 else "done"


def _copies_done(env: Environment) -> bool:
    return all(_copy_state(dsn) == "done" for dsn in env.site_dsn.values())


def run(opts: Options) -> Outcome:
    """One run of the fault suite (see the module docstring)."""
    out = opts.out
    began = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="tributary-faults-", dir=opts.base_dir))
    env = Environment(base, opts)
    rnd = random.Random(opts.seed)

    def say(line: str) -> None:
        out(f"[{time.monotonic() - began:7.1f}s] {line}")

    ok = False
    workloads: list[SiteWorkload] = []
    monitor = Monitor(env)
    try:
        say(f"fault suite: seed {opts.seed}, {opts.faults} faults, servers in {base}")
        env.start_servers()
        env.prepare()
        for d in env.daemons:
            d.start()
        monitor.start()
        transaction = fault_suite_workload(opts.devices, opts.settings)
        workloads = [SiteWorkload(env.site_dsn[s], transaction, seed=opts.seed * 10 + i)
                     for i, s in enumerate(SITES)]
        for w in workloads:
            w.start()
        say("pipeline started, workload running, initial copies under way")
        versioned_added: set[str] = set()
        injector = Injector(env, monitor, rnd, opts.quick)
        kinds = list(KINDS)
        rnd.shuffle(kinds)  # every kind once, in random order, then at random; first a
        kinds.remove("failpoint_source")  # source crash inside the initial copy (issue 11, 1.)
        kinds.insert(0, "failpoint_source")
        faults: list[Fault] = []
        unexpected: list[str] = []
        for n in range(opts.faults):
            _add_versioned_rows(env, versioned_added)
            kind = kinds[n] if n < len(kinds) else rnd.choice(KINDS)
            if n:
                time.sleep(rnd.uniform(0.5, 3))
            fault = injector.inject(kind)
            fault.recovery_s = _markers(env, opts.recovery_timeout)
            unexpected += _unexpected_exits(env)
            faults.append(fault)
            rec = "NOT RECOVERED" if fault.recovery_s is None else f"recovered in {fault.recovery_s:.1f}s"
            say(f"fault {n + 1}/{opts.faults} {fault.kind} {fault.target} {fault.detail}"
                f" held {fault.held_s:.1f}s, {rec}{' - ' + fault.note if fault.note else ''}")
            if fault.recovery_s is None:
                say("the pipeline did not recover: no more faults")
                break
        say("faults done; stopping the workload and waiting for the cloud to catch up")
        for w in workloads:
            w.finish()
        deadline = time.monotonic() + opts.recovery_timeout
        while not _copies_done(env) and time.monotonic() < deadline:
            time.sleep(1)
        recovered = _copies_done(env) and _markers(env, opts.recovery_timeout) is not None
        unexpected += _unexpected_exits(env)
        counts = check(env.site_dsn, env.cloud_dsn)
        bumps = sum(count(dsn, "SELECT sum(version) FROM versioned") for dsn in env.site_dsn.values())
        monitor.sample()
        outcome = Outcome(faults, counts, dict(monitor.peak_kb), dict(monitor.slot_lag),
                          unexpected, _stopped_sites(env),
                          {"transactions": sum(w.committed for w in workloads),
                           "site_outages_seen": sum(w.outages for w in workloads),
                           "errors": sum(w.error is not None for w in workloads),
                           "version_raises": bumps},
                          time.monotonic() - began, recovered)
        for w in workloads:
            if w.error is not None:
                say(f"workload error: {w.error!r}")
                outcome.unexpected_exits.append(f"workload: {w.error!r}")
        ok = outcome.ok
        return outcome
    finally:
        monitor.halt.set()
        for w in workloads:
            w.finish(10)
        codes = env.stop()
        if any(c not in (0, None) for c in codes.values()):
            say(f"daemon exit codes at the end: {codes}")
        if ok and not opts.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            say(f"logs and data kept in {base}")


def _add_versioned_rows(env: Environment, added: set[str]) -> None:
    """The versioned rows, at each site whose initial copy is done: they reach the cloud only
    through the stream, so every apply of them is a stream transaction the trigger may judge
    (a resumed copy reads rows as they are now, then the stream replays older states over
    them by design: that is not a stale apply)."""
    for s, dsn in env.site_dsn.items():
        if s in added:
            continue
        try:
            if _copy_state(dsn) == "done":
                execute(dsn, "INSERT INTO versioned SELECT g, 0 FROM generate_series(1, %s) g",
                        params=(VERSIONED_ROWS,))
                added.add(s)
        except psycopg.OperationalError:
            pass


def summary(outcome: Outcome) -> str:
    """What the run prints at the end."""
    d = outcome.as_dict()
    lines = ["", "faults by kind:"]
    lines += [f"  {k:<18} {v}" for k, v in sorted(d["faults_by_kind"].items())]
    fired = Counter(f.note for f in outcome.faults if f.kind.startswith("failpoint"))
    if fired:
        lines.append("  failpoints: " + ", ".join(f"{k}: {v}" for k, v in sorted(fired.items())))
    r = d["recovery_s"]
    lines.append(f"recovery (fault end -> a later site commit in the cloud): p50 {r['p50']} s,"
                 f" max {r['max']} s, not recovered {r['not_recovered']}")
    lines += ["", report(outcome.counts), "", "peak RSS (VmHWM, max over restarts):"]
    lines += [f"  {k:<14} {v / 1024:8.1f} MB" for k, v in sorted(outcome.peak_rss_kb.items())]
    lines.append("max slot lag: " + ", ".join(f"site {s} {v:,} bytes"
                                              for s, v in sorted(outcome.max_slot_lag_bytes.items())))
    lines.append(f"workload: {d['workload']}")
    for line in outcome.unexpected_exits:
        lines.append(f"UNEXPECTED EXIT: {line}")
    for line in outcome.stopped_sites:
        lines.append(f"SITE STOPPED: {line}")
    if not outcome.recovered_at_end:
        lines.append("NOT RECOVERED at the end")
    lines.append(f"{'OK' if outcome.ok else 'FAILED'} in {outcome.seconds:.0f} s")
    return "\n".join(lines)


def write_results(outcome: Outcome, opts: Options) -> Path | None:
    if opts.results_dir is None:
        return None
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = opts.results_dir / f"faults-{'quick-' if opts.quick else ''}{stamp}.json"
    path.write_text(json.dumps({"seed": opts.seed, "quick": opts.quick, **outcome.as_dict()},
                               indent=1, default=str))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/faults", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the reduced form (about 12 faults)")
    parser.add_argument("--faults", type=int, help="how many faults (default 100, quick 12)")
    parser.add_argument("--seed", type=int, default=1, help="chooses the faults and their timing")
    parser.add_argument("--keep", action="store_true", help="keep the servers' data and logs")
    args = parser.parse_args(argv)
    opts = Options.quick_form(seed=args.seed, keep=args.keep) if args.quick \
        else Options(seed=args.seed, keep=args.keep)
    if args.faults is not None:
        opts.faults = args.faults
    outcome = run(opts)
    print(summary(outcome), flush=True)
    path = write_results(outcome, opts)
    if path is not None:
        print(f"figures written to {path}", flush=True)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
