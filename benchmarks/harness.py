"""What every benchmark here runs on: child processes with their CPU seconds and peak memory
from /proc, waits with progress lines, py-spy profiles, the temp dir and servers of a run with
their cleanup (also on errors and Ctrl-C), and the run itself: figures printed and written to
``bench-results/``. The benchmarks (pipeline.py, memory.py, latency.py) differ only in what
they start and measure.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from devenv.kafka import KafkaBroker
from devenv.postgres import PgCluster

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench-results"
PROGRESS_EVERY_S = 10.0
POLL_S = 0.1
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The run cannot go on; the message says why (with a daemon's log tail where useful)."""


# ------------------------------------------------------------------------------------ output

_T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


def thousands(n: float) -> str:
    return f"{n:,.0f}"


# ------------------------------------------------------------------------------------- /proc

def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after ``pid (comm)``), or None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one process (all its threads)."""
    f = _stat_fields(pid)
    return None if f is None else (int(f[11]) + int(f[12])) / CLK_TCK


def tree_cpu_s(leader: int | None) -> float | None:
    """CPU seconds of a server process, its live children and its reaped children.

    A PostgreSQL backend calls setsid(), so the process group does not find the backends; they
    are the postmaster's direct children, and the ones already gone are in its cutime/cstime.
    """
    if leader is None:
        return None
    lead = _stat_fields(leader)
    if lead is None:
        return None
    total = sum(int(x) for x in lead[11:15])  # utime stime cutime cstime
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == leader:
            continue
        f = _stat_fields(int(entry.name))
        if f is not None and len(f) > 12 and int(f[1]) == leader:
            total += int(f[11]) + int(f[12])
    return total / CLK_TCK


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else round(after - before, 2)


# ---------------------------------------------------------------------------- child processes

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:  # preexec_fn: nothing outlives a SIGKILLed benchmark
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def child_env() -> dict[str, str]:
    """The environment of the daemons: ours without CDC_* (the config files say everything)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}


class Child:
    """A process we start and reap ourselves (``wait4``: exit code and its resource usage)."""

    def __init__(self, name: str, argv: list[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log_path, self.env = name, argv, log_path, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.rusage: Any = None
        self.t0 = 0.0  # monotonic at start
        self.t0_wall = 0.0
        self.t_exit: float | None = None

    def start(self) -> "Child":
        with open(self.log_path, "ab") as log:
            self.t0_wall, self.t0 = time.time(), time.monotonic()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=REPO, env=self.env,
                                         preexec_fn=_die_with_parent)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def poll(self) -> int | None:
        if self.proc is None or self.returncode is not None:
            return self.returncode
        try:
            pid, status, rusage = os.wait4(self.proc.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status, rusage = self.proc.pid, 255 << 8, None
        if pid:
            self.t_exit = time.monotonic()
            self.returncode = os.waitstatus_to_exitcode(status)
            self.proc.returncode = self.returncode
            self.rusage = rusage
        return self.returncode

    def running(self) -> bool:
        return self.proc is not None and self.poll() is None

    def wait(self, timeout: float, step: float = 0.01) -> int | None:
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(step)
        return self.returncode

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and a bounded wait; SIGKILL after ``timeout``. Returns the exit code."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            if self.wait(timeout, 0.05) is None:
                say(f"{self.name} did not stop within {timeout:.0f}s after SIGTERM; killing it")
                self.kill()
        return self.returncode

    def kill(self) -> None:
        if self.running():
            self.proc.kill()  # type: ignore[union-attr]
            self.wait(15, 0.05)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"
        return "\n".join(text.splitlines()[-lines:]) or f"<{self.log_path} is empty>"

    def log_event_s(self, msg: str) -> float | None:
        """Seconds from start to the first JSON log line whose ``msg`` is ``msg``."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return None
        for line in lines:
            if f'"msg": "{msg}"' not in line:
                continue
            try:
                rec = json.loads(line)
                ts = datetime.strptime(rec["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
            except (ValueError, KeyError):
                continue
            return ts.replace(tzinfo=timezone.utc).timestamp() - self.t0_wall
        return None


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               child: Child | None = None,
               progress: Callable[[float], str] | None = None) -> tuple[float, Any]:
    """Poll ``predicate`` every 0.1 s until truthy; returns (monotonic time, value).

    Fails when ``child`` exits meanwhile or after ``timeout`` seconds, with its log tail.
    """
    start = time.monotonic()
    deadline = start + timeout
    next_report = start + PROGRESS_EVERY_S
    while True:
        value = predicate()
        now = time.monotonic()
        if value:
            return now, value
        if child is not None and child.poll() is not None:
            raise BenchError(f"{child.name} exited with code {child.returncode} while waiting "
                             f"for {what}; its log ({child.log_path}) ends:\n{child.log_tail()}")
        if now >= deadline:
            tail = (f"; {child.name}'s log ({child.log_path}) ends:\n{child.log_tail()}"
                    if child is not None else "")
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
        if progress is not None and now >= next_report:
            say(progress(now - start))
            next_report += PROGRESS_EVERY_S
        time.sleep(POLL_S)


# ------------------------------------------------------------------------------- profiling

def start_profiler(bench: Any, child: Child) -> Child | None:
    """py-spy sampling ``child`` (raw collapsed stacks), or None when py-spy is missing."""
    exe = shutil.which("py-spy")
    if exe is None:
        say("--profile: py-spy not found on PATH (pip install py-spy); not profiling")
        return None
    bench.profile_dir.mkdir(parents=True, exist_ok=True)
    out = bench.profile_dir / f"{child.name}.folded"
    spy = bench.child(f"py-spy-{child.name}",
                      [exe, "record", "--pid", str(child.pid), "--rate", "100", "--format", "raw",
                       "--nonblocking", "--output", str(out)])
    spy.output = out  # type: ignore[attr-defined]
    return spy.start()


def finish_profiler(spy: Child | None) -> dict[str, Any] | None:
    """Wait for py-spy (it ends with its target) and summarize where the samples fell."""
    if spy is None:
        return None
    if spy.wait(60, 0.1) is None:
        spy.proc.send_signal(signal.SIGINT)  # type: ignore[union-attr]
        spy.wait(30, 0.1)
    out: Path = spy.output  # type: ignore[attr-defined]
    if not out.is_file():
        say(f"{spy.name} wrote no profile; its log ends:\n{spy.log_tail(10)}")
        return None
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in out.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", fr) for fr in stack.split(";")]
        own[frames[-1]] += n
        for fr in set(frames):
            inclusive[fr] += n
    if not total:
        return None
    # Tributary's frames below the trunk (main, cli, run, session: in nearly every sample)
    ours = Counter({k: v for k, v in inclusive.items()
                    if re.search(r"\((?:cdc|sinks)/", k.replace(str(REPO) + "/", ""))
                    and v < 0.85 * total})

    def top(c: Counter[str], n: int = 15) -> list[list[Any]]:
        return [[round(100.0 * v / total, 1), k.replace(str(REPO) + "/", "")]
                for k, v in c.most_common(n)]

    return {"samples": total, "file": str(out), "self_pct": top(own),
            "inclusive_pct_below_main_loop": top(ours)}


# ------------------------------------------------------------------------------------ the run

class BenchBase:
    """What every benchmark holds: its temp dir, the child processes and servers it started,
    and their cleanup (also on errors and Ctrl-C, see :func:`run_bench`)."""

    def __init__(self, args: argparse.Namespace, prefix: str) -> None:
        self.args = args
        self.stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        self.children: list[Child] = []
        self.servers: list[PgCluster | KafkaBroker] = []

    def child(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        c = Child(name, argv, self.tmp / f"{name}.log", env)
        self.children.append(c)
        return c

    def cluster(self, name: str, bindir: Path, settings: dict[str, str] | None = None
                ) -> PgCluster:
        """A PostgreSQL cluster started in the temp dir (stopped by :meth:`cleanup`)."""
        cluster = PgCluster(name, self.tmp, settings=settings, bindir=bindir)
        self.servers.append(cluster)
        cluster.start()
        return cluster

    def kafka(self, libs: Path) -> KafkaBroker:
        """A Kafka broker started in the temp dir, warmed up (stopped by :meth:`cleanup`).

        A fresh broker answers the first idempotent producer's PID request with "coordinator
        load in progress" while it creates its internal state; a broker in service does not.
        So one idempotent produce goes first, untimed, to a topic outside the benchmarks'
        prefix, which the sink never sees."""
        from confluent_kafka import Producer

        broker = KafkaBroker(self.tmp / "kafka", libs=libs)
        self.servers.append(broker)
        broker.start(timeout=120)
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers,
                             "enable.idempotence": True, "acks": "all", "log_level": 0})
        producer.produce("tributary-bench-warmup", b"warm-up")
        if producer.flush(120):
            raise BenchError("the Kafka broker did not acknowledge a warm-up record in 120 s")
        return broker

    def daemon(self, kind: str, name: str, config: Path) -> Child:
        return self.child(name, [sys.executable, "-m", "cdc.cli", kind, "run", "--config",
                                 str(config)], child_env())

    def cleanup(self) -> None:
        for c in reversed(self.children):
            try:
                c.stop(30)
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                print(f"bench: stopping {c.name} failed: {exc}", file=sys.stderr)
        for s in reversed(self.servers):
            try:
                s.stop()
            except Exception as exc:  # noqa: BLE001
                print(f"bench: stopping {s!r} failed: {exc}", file=sys.stderr)
        if self.args.keep:
            print(f"bench: kept {self.tmp} (--keep)", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def server_log_tails(self) -> None:
        """Print the servers' log tails: a failure is often explained there."""
        for s in self.servers:
            log = getattr(s, "log_file", None)
            if log is not None and Path(log).is_file():
                lines = Path(log).read_text(errors="replace").splitlines()[-15:]
                print(f"--- {log} (last lines)\n" + "\n".join(lines), file=sys.stderr)


def git_describe() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'+dirty' if dirty else ''}" if head else None



def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def run_bench(args: argparse.Namespace, make: Callable[[argparse.Namespace], Any], name: str,
              render_results: Callable[[dict[str, Any]], str]) -> int:
    """Run a benchmark object (``run``, ``cleanup``, ``server_log_tails``, ``stamp``): signals
    turned into a clean stop, servers stopped also on errors, figures printed and written to
    ``bench-results/<name>-<stamp>.json``."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    bench = make(args)
    try:
        results = bench.run()
    except KeyboardInterrupt:
        print("\nbench: interrupted; cleaning up", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        bench.server_log_tails()
        if not args.keep:
            print("bench: the temp dir is removed; run again with --keep to inspect the logs",
                  file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the cleanup finish
        bench.cleanup()
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}-{bench.stamp}.json"
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print()
    print(render_results(results))
    print(f"\nfigures written to {path.relative_to(REPO)}")
    return 0
