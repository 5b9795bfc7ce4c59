"""Pipeline throughput: Tributary's source and sink against PostgreSQL's own tools, on one backlog.

    python -m benchmarks.pipeline                      # 1,000,000 rows, transactions of 10,000
    python -m benchmarks.pipeline --rows 200000 --tx-size 1000
    python -m benchmarks.pipeline --one-transaction    # the whole backlog in one transaction
    python -m benchmarks.pipeline --profile            # also sample the daemons with py-spy
    python -m benchmarks.pipeline --memory             # peak RSS of each daemon (memory.py)

One run starts a site and a cloud PostgreSQL cluster and a Kafka broker in a temp dir, writes a
backlog of changes at the site behind two logical slots created at the same point, and then
times, one after the other on the same data:

    pg_recvlogical draining slot 2            (baseline of the source)
    ``cdc source run`` draining slot 1        (until the slot confirms the last commit)
    COPY FROM STDIN of the same rows          (baseline of the sink)
    ``cdc sink run`` applying the topic       (until tributary.sites holds the last commit)
    ``cdc sink run`` again over existing rows (every row an ON CONFLICT update)

It prints a table and writes the figures to ``bench-results/pipeline-<timestamp>.json``.
Everything it starts is stopped, and its temp dir removed, also on errors and Ctrl-C.
What the figures mean: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
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

import psycopg

from cdc.core.lsn import format_lsn, parse_lsn
from devenv.kafka import KAFKA_VERSION, KafkaBroker, ensure_kafka
from devenv.postgres import PgCluster, ensure_postgres_installed
from devenv import pipeline

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench-results"

SITE_ID = "site1"
TOPIC_PREFIX = "bench"
TOPIC = f"{TOPIC_PREFIX}.{SITE_ID}"
PUBLICATION = "bench"
SLOT_TRIBUTARY = "bench_tributary"
SLOT_RECVLOGICAL = "bench_recvlogical"
DATABASE = "bench"
DEVICES = 1000
PROGRESS_EVERY_S = 10.0
POLL_S = 0.1
# devenv's cluster settings, plus: no autovacuum. A table just filled by one phase would be
# vacuumed and analyzed during the next phase, on the same 2 cores; the benchmark runs
# VACUUM (ANALYZE) itself between phases instead (untimed).
PG_SETTINGS = {"autovacuum": "off"}
CLK_TCK = os.sysconf("SC_CLK_TCK")

SITE_DDL = (
    "CREATE TABLE public.readings (device_id int NOT NULL, ts timestamptz NOT NULL,"
    " value double precision, quality smallint, note text, PRIMARY KEY (device_id, ts))")
# Row i: device i % 1000 + 1, one reading per device and second; one row in four has a note.
INSERT_SQL = f"""
INSERT INTO public.readings (device_id, ts, value, quality, note)
SELECT i %% {DEVICES} + 1,
       timestamptz '2025-01-01 00:00:00+00' + (i / {DEVICES}) * interval '1 second',
       20 + 5 * sin(i),
       (i %% 4)::smallint,
       CASE WHEN i %% 4 = 0 THEN 'sensor recalibrated, batch ' || (i / {DEVICES}) END
FROM generate_series(%s::bigint, %s::bigint) AS i
"""
COLUMNS = "device_id, ts, value, quality, note"
# The COPY baseline's table: what the sink creates (site column first, key (site, source key)),
# with the site column filled by a DEFAULT so the exported file needs no rewriting.
COPY_TABLE = "bench_copy.readings"
COPY_DDL = [
    "CREATE SCHEMA bench_copy",
    f"CREATE TABLE {COPY_TABLE} (site_id text NOT NULL DEFAULT '{SITE_ID}', device_id integer,"
    " ts timestamp with time zone, value double precision, quality smallint, note text,"
    " PRIMARY KEY (site_id, device_id, ts))",
]
# The same digest of the rows on both sides: the cloud must hold exactly the site's rows.
DIGEST_SQL = ("SELECT count(*), count(DISTINCT (device_id, ts)), sum(value)::numeric(30,6),"
              " sum(quality), count(note), sum(length(note)) FROM {table}{where}")


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


def _delta(after: float | None, before: float | None) -> float | None:
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

def start_profiler(bench: "Bench", child: Child) -> Child | None:
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


class Bench(BenchBase):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, "tributary-bench-")
        self.rows: int = args.rows
        self.tx_size: int = args.rows if args.one_transaction else args.tx_size
        self.timeout: float = args.timeout
        self.results: dict[str, Any] = {"phases": {}}
        self.phases: dict[str, dict[str, Any]] = self.results["phases"]
        self.profile_dir = RESULTS_DIR / f"pipeline-{self.stamp}-profile"

    # -- setup --------------------------------------------------------------------------------
    def start_servers(self) -> None:
        say(f"starting a site and a cloud PostgreSQL and a Kafka broker in {self.tmp}")
        bindir = ensure_postgres_installed()
        libs = ensure_kafka()
        self.bindir = bindir
        self.site = PgCluster("site", self.tmp, settings=PG_SETTINGS, bindir=bindir)
        self.servers.append(self.site)
        self.site.start()
        self.cloud = PgCluster("cloud", self.tmp, settings=PG_SETTINGS, bindir=bindir)
        self.servers.append(self.cloud)
        self.cloud.start()
        self.broker = KafkaBroker(self.tmp / "kafka", libs=libs)
        self.servers.append(self.broker)
        self.broker.start(timeout=120)
        self.warm_kafka()
        self.site_dsn = self.site.create_database(DATABASE)
        self.cloud_dsn = self.cloud.create_database(DATABASE)
        with psycopg.connect(self.site_dsn) as conn:
            self.results["postgres_version"] = conn.execute("SHOW server_version").fetchone()[0]
            settings = conn.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name IN"
                " ('shared_buffers', 'synchronous_commit', 'fsync', 'full_page_writes',"
                " 'logical_decoding_work_mem', 'max_wal_size', 'autovacuum') ORDER BY 1").fetchall()
        self.results["postgres_settings"] = dict(settings)

    def warm_kafka(self) -> None:
        """One idempotent produce before the timed runs (untimed).

        A fresh broker answers the first idempotent producer's PID request with "coordinator
        load in progress" while it creates its internal state; a broker in service does not.
        The topic is outside the benchmark's prefix, so the sink never sees it.
        """
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.broker.bootstrap_servers,
                             "enable.idempotence": True, "acks": "all", "log_level": 0})
        producer.produce("tributary-bench-warmup", b"warm-up")
        if producer.flush(120):
            raise BenchError("the Kafka broker did not acknowledge a warm-up record in 120 s")

    def prepare_site(self) -> None:
        with psycopg.connect(self.site_dsn, autocommit=True) as conn:
            try:
                conn.execute("CREATE EXTENSION pg_walinspect")
                self.walinspect = True
            except psycopg.Error as exc:
                say(f"pg_walinspect is not available ({exc}); the end LSN will be approximate")
                self.walinspect = False
            conn.execute(SITE_DDL)
            conn.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE public.readings")
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                         (SLOT_TRIBUTARY,))
            conn.execute("SELECT pg_copy_logical_replication_slot(%s, %s)",
                         (SLOT_TRIBUTARY, SLOT_RECVLOGICAL))
            rows = conn.execute(
                "SELECT slot_name, confirmed_flush_lsn::text, restart_lsn::text"
                " FROM pg_replication_slots ORDER BY 1").fetchall()
        if len({(r[1], r[2]) for r in rows}) != 1:
            raise BenchError(f"the two slots do not start at the same point: {rows}")
        self.slot_start_lsn = parse_lsn(rows[0][1])
        say(f"publication {PUBLICATION} and slots {SLOT_TRIBUTARY}, {SLOT_RECVLOGICAL} "
            f"created at {rows[0][1]}")

    def load(self) -> None:
        rows, tx = self.rows, self.tx_size
        n_tx = -(-rows // tx)
        say(f"loading {thousands(rows)} rows in {thousands(n_tx)} transaction"
            f"{'s' if n_tx > 1 else ''} of {thousands(min(tx, rows))} rows...")
        t0 = time.monotonic()
        next_report = t0 + PROGRESS_EVERY_S
        with psycopg.connect(self.site_dsn, autocommit=True) as conn:
            done = self.load_before_last(conn)
            while done < rows:
                k = min(tx, rows - done)
                last = done + k >= rows
                with conn.transaction():
                    conn.execute(INSERT_SQL, (done, done + k - 1))
                    if last:
                        xid, before = conn.execute(
                            "SELECT pg_current_xact_id()::text,"
                            " pg_current_wal_insert_lsn()::text").fetchone()  # type: ignore[misc]
                if last:
                    after = conn.execute(
                        "SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]  # type: ignore[index]
                done += k
                if time.monotonic() >= next_report:
                    say(f"  loaded {thousands(done)} rows")
                    next_report += PROGRESS_EVERY_S
        load_s = time.monotonic() - t0
        self.last_xid = xid
        self.before_last_commit = parse_lsn(before)
        self.after_last_commit = parse_lsn(after)
        self.results["load"] = {"seconds": round(load_s, 2), "rows_per_s": round(rows / load_s),
                                "transactions": n_tx}
        say(f"loaded in {load_s:.1f} s ({thousands(rows / load_s)} rows/s)")
        with psycopg.connect(self.site_dsn, autocommit=True) as conn:
            # synchronous_commit is off: the walsender decodes only flushed WAL
            wait_until(lambda: conn.execute("SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn",
                                            (after,)).fetchone()[0],  # type: ignore[index]
                       60, "the site's WAL flush to pass the last commit")
            self.end_lsn = self.find_end_lsn(conn)
            size = conn.execute("SELECT pg_table_size('public.readings'),"
                                " pg_indexes_size('public.readings')").fetchone()
        wal = self.end_lsn - self.slot_start_lsn
        self.results["backlog"] = {
            "rows": rows, "tx_size": min(tx, rows), "transactions": n_tx,
            "wal_bytes": wal, "slot_start_lsn": format_lsn(self.slot_start_lsn),
            "last_commit_end_lsn": format_lsn(self.end_lsn),
            "end_lsn_exact": self.end_lsn_exact,
            "insert_lsn_before_last_commit": format_lsn(self.before_last_commit),
            "insert_lsn_after_last_commit": format_lsn(self.after_last_commit),
            "site_table_bytes": size[0], "site_index_bytes": size[1]}  # type: ignore[index]
        say(f"backlog: {wal / 2**20:.0f} MB of WAL; last commit ends at "
            f"{format_lsn(self.end_lsn)}{'' if self.end_lsn_exact else ' (approximate)'}")

    def load_before_last(self, conn: psycopg.Connection) -> int:
        """Rows a subclass writes its own way before the transactions below (none here)."""
        return 0

    def find_end_lsn(self, conn: psycopg.Connection) -> int:
        """The end LSN of the last load transaction's commit record: what the slots must reach.

        A decoder's Commit carries the commit record's end; pg_walinspect reads the same record
        from the WAL between the insert positions just before and just after the COMMIT.
        Without it, the insert position after the COMMIT (>= the commit's end) is used.
        """
        self.end_lsn_exact = False
        if self.walinspect:
            row = conn.execute(
                "SELECT end_lsn::text FROM pg_get_wal_records_info(%s::pg_lsn, %s::pg_lsn)"
                " WHERE resource_manager = 'Transaction' AND record_type = 'COMMIT'"
                " AND xid::text = %s ORDER BY start_lsn DESC LIMIT 1",
                (format_lsn(self.before_last_commit), format_lsn(self.after_last_commit),
                 self.last_xid)).fetchone()
            if row is not None:
                self.end_lsn_exact = True
                return parse_lsn(row[0])
            say(f"no COMMIT record of xid {self.last_xid} found with pg_walinspect; "
                "using the insert position after it")
        return self.after_last_commit

    def settle_site(self) -> None:
        """VACUUM (ANALYZE) and CHECKPOINT after the load, so neither runs during a drain."""
        with psycopg.connect(self.site_dsn, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) public.readings")
            conn.execute("CHECKPOINT")

    def export_rows(self) -> None:
        """The site's rows as COPY text, for the COPY baseline (untimed)."""
        self.export_path = self.tmp / "readings.copy"
        with psycopg.connect(self.site_dsn) as conn, open(self.export_path, "wb") as f:
            with conn.cursor().copy(f"COPY public.readings ({COLUMNS}) TO STDOUT") as copy:
                for block in copy:
                    f.write(block)
        size = self.export_path.stat().st_size
        self.results["backlog"]["copy_file_bytes"] = size
        say(f"exported the site rows for the COPY baseline ({size / 2**20:.0f} MB)")

    # -- measurements -------------------------------------------------------------------------
    def slot_lsn(self, conn: psycopg.Connection, slot: str) -> int:
        row = conn.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots"
                           " WHERE slot_name = %s", (slot,)).fetchone()
        return parse_lsn(row[0]) if row and row[0] else 0

    def wal_progress(self, lsn: int) -> str:
        span = max(1, self.end_lsn - self.slot_start_lsn)
        return f"{100.0 * max(0, lsn - self.slot_start_lsn) / span:.0f}% of the backlog's WAL"

    def pg_recvlogical(self) -> None:
        say("draining with pg_recvlogical...")
        exe = self.bindir / "pg_recvlogical"
        argv = [str(exe), "-d", self.site_dsn, "--slot", SLOT_RECVLOGICAL, "--start",
                f"--endpos={format_lsn(self.end_lsn)}", "--no-loop",
                "-o", "proto_version=1", "-o", f"publication_names={PUBLICATION}",
                "-f", "/dev/null"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        site0 = tree_cpu_s(self.site.pid)
        c = self.child("pg_recvlogical", argv, env).start()
        rc = c.wait(self.timeout)
        if rc is None:
            c.kill()
            raise BenchError(f"pg_recvlogical did not reach {format_lsn(self.end_lsn)} within "
                             f"{self.timeout:.0f}s; its log ends:\n{c.log_tail()}")
        if rc != 0:
            raise BenchError(f"pg_recvlogical exited with {rc}:\n{c.log_tail()}")
        seconds = (c.t_exit or time.monotonic()) - c.t0
        time.sleep(0.5)  # the postmaster reaps the walsender: its CPU moves to cutime
        with psycopg.connect(self.site_dsn) as conn:
            reached = self.slot_lsn(conn, SLOT_RECVLOGICAL)
        ru = c.rusage
        self.phases["pg_recvlogical"] = {
            "seconds": round(seconds, 3), "rows_per_s": round(self.rows / seconds),
            "peak_rss_mb": round(ru.ru_maxrss / 1024, 1) if ru else None,
            "cpu_s": {"client": round(ru.ru_utime + ru.ru_stime, 2) if ru else None,
                      "site_postgres": _delta(tree_cpu_s(self.site.pid), site0)},
            "slot_confirmed_lsn_after": format_lsn(reached)}
        say(f"pg_recvlogical: {seconds:.2f} s ({thousands(self.rows / seconds)} rows/s)")

    def site_config(self) -> Path:
        return pipeline.site_config(
            self.tmp / "site.toml", SITE_ID, self.site_dsn, self.broker.bootstrap_servers,
            TOPIC_PREFIX, slot=SLOT_TRIBUTARY, tables="public.readings", publication=PUBLICATION,
            status_interval_s=10)

    def cloud_config(self, group: str) -> Path:
        return pipeline.cloud_config(self.tmp / f"cloud-{group}.toml", self.cloud_dsn,
                                     self.broker.bootstrap_servers, TOPIC_PREFIX, group)

    def daemon_phase(self, c: Any, done: float, name: str, ready_event: str, server_key: str,
                     server_pid: int | None, server0: float | None,
                     kafka0: float | None) -> tuple[dict[str, Any], float | None]:
        """Stop a timed daemon and gather its figures: time, memory, CPU of it and its servers."""
        seconds = done - c.t0
        hwm, cpu = vm_hwm_mb(c.pid), process_cpu_s(c.pid)
        server_cpu = _delta(tree_cpu_s(server_pid), server0)
        kafka_cpu = _delta(tree_cpu_s(self.broker.pid), kafka0)
        startup = c.log_event_s(ready_event)
        rc = c.stop(60)
        if rc != 0:
            raise BenchError(f"the {name} exited with {rc} on SIGTERM:\n{c.log_tail()}")
        return {
            "seconds": round(seconds, 3), "rows_per_s": round(self.rows / seconds),
            "startup_s": round(startup, 3) if startup is not None else None,
            "peak_rss_mb": round(hwm, 1) if hwm else None,
            "cpu_s": {"client": round(cpu, 2) if cpu is not None else None,
                      server_key: server_cpu, "kafka": kafka_cpu}}, startup

    def record_phase(self, phase: str, minus_startup: str, figures: dict[str, Any],
                     startup: float | None) -> None:
        self.phases[phase] = figures
        if startup is not None:
            seconds = figures["seconds"]
            self.phases[minus_startup] = {
                "seconds": round(seconds - startup, 3),
                "rows_per_s": round(self.rows / (seconds - startup))}

    def source(self) -> None:
        say("draining with the Tributary source (cdc source run)...")
        site0, kafka0 = tree_cpu_s(self.site.pid), tree_cpu_s(self.broker.pid)
        c = self.daemon("source", "source", self.site_config()).start()
        spy = start_profiler(self, c) if self.args.profile else None
        target = self.end_lsn
        with psycopg.connect(self.site_dsn, autocommit=True) as conn:
            last = [0]

            def reached() -> bool:
                last[0] = self.slot_lsn(conn, SLOT_TRIBUTARY)
                return last[0] >= target

            done, _ = wait_until(
                reached, self.timeout, f"slot {SLOT_TRIBUTARY} to confirm {format_lsn(target)}",
                c, lambda s: f"  source: {s:.0f} s, slot confirmed {self.wal_progress(last[0])}")
        figures, startup = self.daemon_phase(
            c, done, "source", "streaming", "site_postgres", self.site.pid, site0, kafka0)
        seconds = figures["seconds"]
        hwm = figures["peak_rss_mb"]
        topic_bytes = sum(p.stat().st_size for p in
                          (self.broker.data_dir / f"{TOPIC}-0").glob("*.log"))
        figures.update({
            "kafka_topic_bytes": topic_bytes,
            "kafka_records": self.rows + 2 * self.results["backlog"]["transactions"],
            "profile": finish_profiler(spy)})
        self.record_phase("source", "source_streaming", figures, startup)
        say(f"source: {seconds:.2f} s ({thousands(self.rows / seconds)} rows/s), of which "
            f"start-up {startup if startup is not None else float('nan'):.2f} s; "
            f"peak RSS {hwm or 0:.0f} MB; topic {topic_bytes / 2**20:.0f} MB")

    def copy_baseline(self) -> None:
        say("COPY FROM STDIN of the same rows into an empty cloud table...")
        with psycopg.connect(self.cloud_dsn, autocommit=True) as conn:
            for stmt in COPY_DDL:
                conn.execute(stmt)
            conn.execute("CHECKPOINT")
        cloud0 = tree_cpu_s(self.cloud.pid)
        with psycopg.connect(self.cloud_dsn) as conn, open(self.export_path, "rb") as f:
            t0 = time.monotonic()
            with conn.cursor().copy(f"COPY {COPY_TABLE} ({COLUMNS}) FROM STDIN") as copy:
                while block := f.read(1 << 20):
                    copy.write(block)
            conn.commit()
            seconds = time.monotonic() - t0
        time.sleep(0.5)  # the postmaster reaps the backend: its CPU moves to cutime
        cloud_cpu = _delta(tree_cpu_s(self.cloud.pid), cloud0)
        self.check_cloud_rows(COPY_TABLE, "the COPY baseline")
        with psycopg.connect(self.cloud_dsn, autocommit=True) as conn:
            conn.execute(f"VACUUM (ANALYZE) {COPY_TABLE}")  # not during the sink's run
        self.phases["copy"] = {
            "seconds": round(seconds, 3), "rows_per_s": round(self.rows / seconds),
            "cpu_s": {"cloud_postgres": cloud_cpu}}
        say(f"COPY: {seconds:.2f} s ({thousands(self.rows / seconds)} rows/s)")

    def sink(self, phase: str, group: str, profile: bool = False) -> None:
        """Run ``cdc sink run`` until tributary.sites holds the last load transaction."""
        with psycopg.connect(self.cloud_dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        cloud0, kafka0 = tree_cpu_s(self.cloud.pid), tree_cpu_s(self.broker.pid)
        c = self.daemon("sink", phase, self.cloud_config(group)).start()
        spy = start_profiler(self, c) if profile else None
        # Commit end LSNs of earlier transactions are <= the insert position before the last
        # COMMIT; only the last transaction's is beyond it.
        above = format_lsn(self.before_last_commit)
        with psycopg.connect(self.cloud_dsn, autocommit=True) as conn:
            last: list[Any] = [None]

            def applied() -> Any:
                try:
                    row = conn.execute(
                        "SELECT end_lsn::text, end_lsn > %s::pg_lsn FROM tributary.sites"
                        " WHERE site_id = %s", (above, SITE_ID)).fetchone()
                except psycopg.errors.UndefinedTable:
                    return None
                last[0] = row[0] if row else None
                return row[0] if row and row[1] else None

            def progress(s: float) -> str:
                at = self.wal_progress(parse_lsn(last[0])) if last[0] else "nothing"
                return f"  {phase}: {s:.0f} s, applied {at}"

            done, end_lsn = wait_until(applied, self.timeout,
                                       f"the cloud to apply the last transaction ({phase})", c,
                                       progress)
        figures, startup = self.daemon_phase(
            c, done, "sink", "assigned", "cloud_postgres", self.cloud.pid, cloud0, kafka0)
        seconds = figures["seconds"]
        hwm = figures["peak_rss_mb"]
        if parse_lsn(end_lsn) != self.end_lsn:
            say(f"note: the cloud's last applied end LSN is {end_lsn}, the load's last commit "
                f"ends at {format_lsn(self.end_lsn)}")
        self.check_cloud_rows("public.readings", phase, site_id=SITE_ID)
        figures.update({"applied_end_lsn": end_lsn, "profile": finish_profiler(spy)})
        self.record_phase(phase, f"{phase}_applying", figures, startup)
        say(f"{phase}: {seconds:.2f} s ({thousands(self.rows / seconds)} rows/s), of which "
            f"start-up {startup if startup is not None else float('nan'):.2f} s; "
            f"peak RSS {hwm or 0:.0f} MB")

    def sink_upsert(self) -> None:
        """The sink again over the same topic while the cloud already holds every row.

        Its progress must not make it skip anything: a fresh consumer group has no stored
        offsets (it reads the topic from the start) and without the site's row in
        tributary.sites no transaction counts as applied, so every row is re-applied, each
        an INSERT ... ON CONFLICT DO UPDATE over an existing row.
        """
        say("applying the topic again over the existing rows (sink upsert)...")
        with psycopg.connect(self.cloud_dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM tributary.sites WHERE site_id = %s", (SITE_ID,))
            # as autovacuum would have done long before rows are updated again
            conn.execute("VACUUM (ANALYZE) public.readings")
        self.sink("sink_upsert", "bench-upsert")

    def check_cloud_rows(self, table: str, what: str, site_id: str | None = None) -> None:
        """The cloud table holds exactly the site's rows (count and column digests)."""
        with psycopg.connect(self.site_dsn) as conn:
            want = conn.execute(DIGEST_SQL.format(table="public.readings", where="")).fetchone()
        where = f" WHERE site_id = '{site_id}'" if site_id else ""
        with psycopg.connect(self.cloud_dsn) as conn:
            got = conn.execute(DIGEST_SQL.format(table=table, where=where)).fetchone()
        if got != want:
            raise BenchError(f"{what}: the cloud rows differ from the site's: "
                             f"site {want}, cloud {got}")

    # -- the whole run ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        r = self.results
        r["started_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        r["parameters"] = {"rows": self.rows, "tx_size": min(self.tx_size, self.rows),
                           "one_transaction": self.args.one_transaction,
                           "profile": self.args.profile, "timeout_s": self.timeout}
        r["machine"] = {"cores": os.cpu_count(), "loadavg_at_start": os.getloadavg(),
                        "python": platform.python_version(), "platform": platform.platform(),
                        "kafka_version": KAFKA_VERSION, "git": git_describe()}
        self.start_servers()
        self.prepare_site()
        self.load()
        self.export_rows()
        self.settle_site()
        self.pg_recvlogical()
        self.source()
        self.copy_baseline()
        self.sink("sink", "bench-sink", profile=self.args.profile)
        if not self.args.skip_upsert:
            self.sink_upsert()
        r["machine"]["loadavg_at_end"] = os.getloadavg()
        self.add_ratios()
        return r

    def add_ratios(self) -> None:
        p = self.phases
        for name, base in (("source", "pg_recvlogical"), ("source_streaming", "pg_recvlogical"),
                           ("sink", "copy"), ("sink_applying", "copy"),
                           ("sink_upsert", "copy"), ("sink_upsert_applying", "copy")):
            if name in p and base in p:
                p[name]["baseline"] = base
                p[name]["speed_vs_baseline"] = round(p[name]["rows_per_s"] / p[base]["rows_per_s"], 3)
                p[name]["time_vs_baseline"] = round(p[name]["seconds"] / p[base]["seconds"], 2)


def git_describe() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                              capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'+dirty' if dirty else ''}" if head else None


# ------------------------------------------------------------------------------------ report

LABELS = [
    ("pg_recvlogical", "pg_recvlogical drain (baseline)"),
    ("source", "tributary source, from start"),
    ("source_streaming", "tributary source, minus start-up"),
    ("copy", "COPY FROM STDIN (baseline)"),
    ("sink", "tributary sink, from start"),
    ("sink_applying", "tributary sink, minus start-up"),
    ("sink_upsert", "sink upsert over existing rows"),
    ("sink_upsert_applying", "  ... minus start-up"),
]


def render(r: dict[str, Any]) -> str:
    p, b, m = r["phases"], r["backlog"], r["machine"]
    par = r["parameters"]
    out = []
    out.append(f"Tributary pipeline benchmark  {r['started_at']}  (git {m['git']})")
    out.append(f"rows {par['rows']:,} in {b['transactions']:,} transaction"
               f"{'s' if b['transactions'] > 1 else ''} of {b['tx_size']:,}; "
               f"WAL {b['wal_bytes'] / 2**20:.0f} MB; Kafka topic "
               f"{p.get('source', {}).get('kafka_topic_bytes', 0) / 2**20:.0f} MB; "
               f"{m['cores']} cores; load avg {m['loadavg_at_start'][0]:.2f} -> "
               f"{m.get('loadavg_at_end', [float('nan')])[0]:.2f}")
    out.append(f"PostgreSQL {r.get('postgres_version')}, Kafka {m['kafka_version']}, "
               f"Python {m['python']}; site load {r['load']['seconds']:.1f} s "
               f"({r['load']['rows_per_s']:,} rows/s, untimed)")
    out.append("")
    head = (f"{'phase':<34} {'seconds':>8} {'rows/s':>10} {'speed vs':>9} {'time vs':>8} "
            f"{'peak RSS':>9}  {'CPU s: client / postgres / kafka':<32}")
    out.append(head)
    out.append(f"{'':<34} {'':>8} {'':>10} {'baseline':>9} {'baseline':>8} {'MB':>9}")
    out.append("-" * len(head))
    for key, label in LABELS:
        ph = p.get(key)
        if ph is None:
            continue
        speed = f"{ph['speed_vs_baseline']:.2f}" if "speed_vs_baseline" in ph else (
            "1.00" if key in ("pg_recvlogical", "copy") else "")
        slow = f"{ph['time_vs_baseline']:.2f}x" if "time_vs_baseline" in ph else (
            "1.00x" if key in ("pg_recvlogical", "copy") else "")
        rss = f"{ph['peak_rss_mb']:.0f}" if ph.get("peak_rss_mb") else ""
        cpu = ph.get("cpu_s") or {}
        if cpu:
            pg = cpu.get("site_postgres", cpu.get("cloud_postgres"))
            parts = [cpu.get("client"), pg, cpu.get("kafka")]
            cpu_s = " / ".join("-" if v is None else f"{v:.1f}" for v in parts)
        else:
            cpu_s = ""
        out.append(f"{label:<34} {ph['seconds']:>8.2f} {ph['rows_per_s']:>10,} {speed:>9} "
                   f"{slow:>8} {rss:>9}  {cpu_s}")
    out.append("")
    out.append("speed vs baseline = rows/s / the baseline's rows/s (source: pg_recvlogical, "
               "sink: COPY); time vs baseline = its inverse.")
    for key in ("source", "sink"):
        prof = p.get(key, {}).get("profile")
        if prof:
            out.append("")
            out.append(f"py-spy, {key} ({prof['samples']} samples, {prof['file']}):")
            out.append("  own time (leaf frame):")
            out += [f"    {pct:5.1f}%  {fr}" for pct, fr in prof["self_pct"][:12]]
            out.append("  inclusive, Tributary frames below the main loop:")
            out += [f"    {pct:5.1f}%  {fr}" for pct, fr in prof["inclusive_pct_below_main_loop"][:12]]
    return "\n".join(out)


# -------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline",
        description="Throughput of the Tributary source and sink against pg_recvlogical and "
                    "COPY on one backlog of site changes (see benchmarks/README.md).")
    ap.add_argument("--rows", type=int, default=1_000_000,
                    help="changes in the backlog (default 1,000,000)")
    ap.add_argument("--tx-size", type=int, default=10_000,
                    help="rows per site transaction (default 10,000)")
    ap.add_argument("--one-transaction", action="store_true",
                    help="write the whole backlog as one transaction (memory check)")
    ap.add_argument("--skip-upsert", action="store_true",
                    help="skip the second sink run over existing rows")
    ap.add_argument("--timeout", type=float, default=900,
                    help="seconds each drain may take before the run fails (default 900)")
    ap.add_argument("--profile", action="store_true",
                    help="sample the source and the first sink run with py-spy (on PATH); "
                         "the figures of such a run are not comparable")
    ap.add_argument("--memory", action="store_true",
                    help="peak RSS of the source and the sink for one 1,000,000-row transaction "
                         "and a burst of 100,000 one-row transactions (benchmarks/memory.py); "
                         "--rows, --tx-size and the baselines do not apply")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temp dir (data dirs, daemon logs) for inspection")
    args = ap.parse_args(argv)
    if args.rows < 1 or args.tx_size < 1:
        ap.error("--rows and --tx-size must be positive")
    return args


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory:
        from benchmarks import memory
        return run_bench(args, memory.MemoryCheck, "memory", memory.render)
    return run_bench(args, Bench, "pipeline", render)


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


if __name__ == "__main__":
    sys.exit(main())
