"""Pipeline throughput: Tributary's source and sink against PostgreSQL's own tools, on one backlog.

    python -m benchmarks                      # 1,000,000 rows, transactions of 10,000
    python -m benchmarks --rows 200000 --tx-size 1000
    python -m benchmarks --one-transaction    # the whole backlog in one transaction
    python -m benchmarks --profile            # also sample the daemons with py-spy
    python -m benchmarks --memory             # peak RSS of each daemon (memory.py)

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
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.harness import (PROGRESS_EVERY_S, RESULTS_DIR, BenchBase, BenchError, delta, finish_profiler,
                                git_describe, process_cpu_s, say, start_profiler,
                                thousands, tree_cpu_s, vm_hwm_mb, wait_until)
from cdc.core.lsn import format_lsn, parse_lsn
from devenv.kafka import KAFKA_VERSION, ensure_kafka
from devenv.postgres import ensure_postgres_installed
from devenv import pipeline


SITE_ID = "site1"
TOPIC_PREFIX = "bench"
TOPIC = f"{TOPIC_PREFIX}.{SITE_ID}"
PUBLICATION = "bench"
SLOT_TRIBUTARY = "bench_tributary"
SLOT_RECVLOGICAL = "bench_recvlogical"
DATABASE = "bench"
DEVICES = 1000
# devenv's cluster settings, plus: no autovacuum. A table just filled by one phase would be
# vacuumed and analyzed during the next phase, on the same 2 cores; the benchmark runs
# VACUUM (ANALYZE) itself between phases instead (untimed).
PG_SETTINGS = {"autovacuum": "off"}

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
        self.site = self.cluster("site", bindir, PG_SETTINGS)
        self.cloud = self.cluster("cloud", bindir, PG_SETTINGS)
        self.broker = self.kafka(libs)
        self.site_dsn = self.site.create_database(DATABASE)
        self.cloud_dsn = self.cloud.create_database(DATABASE)
        with psycopg.connect(self.site_dsn) as conn:
            self.results["postgres_version"] = conn.execute("SHOW server_version").fetchone()[0]
            settings = conn.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name IN"
                " ('shared_buffers', 'synchronous_commit', 'fsync', 'full_page_writes',"
                " 'logical_decoding_work_mem', 'max_wal_size', 'autovacuum') ORDER BY 1").fetchall()
        self.results["postgres_settings"] = dict(settings)

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
                      "site_postgres": delta(tree_cpu_s(self.site.pid), site0)},
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
        server_cpu = delta(tree_cpu_s(server_pid), server0)
        kafka_cpu = delta(tree_cpu_s(self.broker.pid), kafka0)
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
        cloud_cpu = delta(tree_cpu_s(self.cloud.pid), cloud0)
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
        prog="python -m benchmarks",
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



