"""Running the pipeline locally: configs, the daemons as real processes, site-vs-cloud comparison.

Used by the integration tests, the demo (``python -m devenv.demo``) and the benchmark.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]


def site_config(path: Path, site_id: str, dsn: str, kafka: str, prefix: str,
                extra: str = "", slot: str | None = None, tables: str = "public.*",
                publication: str = "tributary", status_interval_s: float = 1,
                kafka_extra: str = "", site_extra: str = "") -> Path:
    """A site config file (status every second by default: tests wait on slot positions);
    ``site_extra`` lines go into [site], ``kafka_extra`` into [kafka]."""
    path.write_text(f"""
[site]
id = "{site_id}"
dsn = "{dsn}"
{f'slot = "{slot}"' if slot else ''}
tables = ["{tables}"]
publication = "{publication}"
status_interval_s = {status_interval_s}
{site_extra}

[kafka]
bootstrap_servers = "{kafka}"
topic_prefix = "{prefix}"
{kafka_extra}

[log]
format = "json"
{extra}
""")
    return path


def cloud_config(path: Path, dsn: str, kafka: str, prefix: str, group: str,
                 extra: str = "", kafka_extra: str = "") -> Path:
    """A cloud config file; ``extra`` lines go into [sink], ``kafka_extra`` into [kafka]."""
    path.write_text(f"""
[sink]
dsn = "{dsn}"
group_id = "{group}"
{extra}

[kafka]
bootstrap_servers = "{kafka}"
topic_prefix = "{prefix}"
{kafka_extra}
""")
    return path


def _env_with_repo() -> dict[str, str]:
    """The environment with this checkout first on the import path, whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


class Daemon:
    """``cdc source run`` or ``cdc sink run`` as a child process, its log in a file."""

    def __init__(self, kind: str, config: Path, log_dir: Path, name: str) -> None:
        self.kind, self.config, self.name = kind, config, name
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> "Daemon":
        """Start the daemon; ``env`` adds variables (e.g. TRIBUTARY_FAILPOINTS) to this run."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdc.cli", self.kind, "run", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env={**_env_with_repo(), **(env or {})})
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"{self.name} did not stop within {timeout}s:\n{self.log()}")
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               daemons: tuple[Daemon, ...] = ()) -> None:
    """Poll ``predicate`` (bounded); on timeout fail with the daemons' log tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for d in daemons:
            if d.proc is not None and d.proc.poll() is not None:
                raise AssertionError(f"{d.name} exited with {d.proc.returncode} while waiting "
                                     f"for {what}:\n{d.log()}")
        time.sleep(0.3)
    logs = "\n".join(f"--- {d.name}\n{d.log()}" for d in daemons)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs}")


def execute(dsn: str, *statements: str, params: Any = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt, params)


def rows_of(dsn: str, table: str, columns: list[str], where_site: str | None = None,
            site_column: str = "site_id") -> list[tuple]:
    """Rows as text tuples, ordered, optionally only one site's (cloud side)."""
    schema, _, name = table.partition(".")
    cols = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns)
    query = sql.SQL("SELECT {} FROM {}").format(cols, sql.Identifier(schema, name))
    args: tuple = ()
    if where_site is not None:
        query += sql.SQL(" WHERE {} = %s").format(sql.Identifier(site_column))
        args = (where_site,)
    query += sql.SQL(" ORDER BY 1, 2") if len(columns) > 1 else sql.SQL(" ORDER BY 1")
    with psycopg.connect(dsn) as conn:
        try:
            return [tuple(r) for r in conn.execute(query, args).fetchall()]
        except psycopg.errors.UndefinedTable:
            return []


def count(dsn: str, query: str, params: Any = None) -> int:
    with psycopg.connect(dsn) as conn:
        try:
            row = conn.execute(query, params).fetchone()
        except psycopg.errors.UndefinedTable:
            return -1
    return int(row[0]) if row and row[0] is not None else 0


def site_applied_lsn(cloud_dsn: str, site: str) -> str | None:
    with psycopg.connect(cloud_dsn) as conn:
        try:
            row = conn.execute("SELECT end_lsn::text FROM tributary.sites WHERE site_id = %s",
                               (site,)).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return row[0] if row else None


MARKER_DDL = "CREATE TABLE IF NOT EXISTS public.sync_marker (id text PRIMARY KEY)"
#: the site tables every test workload has: keys that move, a composite key, a TOASTed column
DEVICE_TABLES_DDL = [
    "CREATE TABLE devices (id int PRIMARY KEY, name text NOT NULL, firmware text,"
    " installed date, updated_at timestamptz DEFAULT now())",
    "CREATE TABLE readings (device_id int NOT NULL, ts timestamptz NOT NULL,"
    " value double precision, quality smallint, PRIMARY KEY (device_id, ts))",
    "CREATE TABLE settings (key text PRIMARY KEY, value text, blob text)",
    "ALTER TABLE settings ALTER COLUMN blob SET STORAGE EXTERNAL",
]


def sync(site_dsn: str, cloud_dsn: str, site: str, timeout: float,
         daemons: tuple[Daemon, ...] = ()) -> None:
    """Commit a marker row at the site and wait until the cloud has it: all before it is applied."""
    marker = os.urandom(8).hex()
    execute(site_dsn, "INSERT INTO public.sync_marker VALUES (%s)", params=(marker,))
    wait_until(lambda: count(cloud_dsn, "SELECT count(*) FROM public.sync_marker"
                                        " WHERE site_id = %s AND id = %s", (site, marker)) == 1,
               timeout, f"site {site} marker {marker} in the cloud", daemons)
