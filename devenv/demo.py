"""``python -m devenv.demo``: the whole pipeline on this machine, then proof that it worked.

Starts two site databases with an IoT schema (devices, readings, a config table), a Kafka broker
and a cloud database; runs ``cdc source run`` at each site and ``cdc sink run`` for the cloud;
drives a workload of inserts, updates and deletes with a progress line; then waits until the
cloud has everything and compares every table, site by site, row by row.
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from devenv.kafka import KafkaBroker, ensure_kafka
from devenv.pipeline import (
    MARKER_DDL, Daemon, cloud_config, count, execute, rows_of, site_config, sync, wait_until,
)
from devenv.postgres import PgCluster, ensure_postgres_installed

SCHEMA = [
    "CREATE TABLE devices (id int PRIMARY KEY, kind text NOT NULL, firmware text,"
    " installed_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE readings (device_id int NOT NULL REFERENCES devices, ts timestamptz NOT NULL,"
    " temperature numeric(5,2), humidity real, PRIMARY KEY (device_id, ts))",
    "CREATE TABLE site_config (key text PRIMARY KEY, value text NOT NULL, notes text)",
    MARKER_DDL,
]
TABLES = {
    "public.devices": ["id", "kind", "firmware", "installed_at"],
    "public.readings": ["device_id", "ts", "temperature", "humidity"],
    "public.site_config": ["key", "value", "notes"],
}


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


class SiteWorkload(threading.Thread):
    """An IoT site: devices report readings; firmware updates, config edits, old readings purged."""

    def __init__(self, dsn: str, seconds: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.seconds = dsn, seconds
        self.rng = random.Random(seed)
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # shown by the demo, not lost in the thread
            self.error = exc

    def _run(self) -> None:
        rng = self.rng
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO devices (id, kind, firmware)"
                         " SELECT g, (ARRAY['thermo','hygro','meter'])[1 + g % 3], 'fw-1.0'"
                         " FROM generate_series(1, 50) g")
            conn.execute("INSERT INTO site_config VALUES ('sample_period_s', '10', NULL),"
                         " ('alarm_high_c', '35.0', repeat('calibration note ', 400))")
            self.written += 52
            deadline = time.monotonic() + self.seconds
            tick = 0
            while time.monotonic() < deadline:
                tick += 1
                with conn.transaction():
                    rows = conn.execute(
                        "INSERT INTO readings SELECT d, date_trunc('milliseconds', clock_timestamp())"
                        " + d * interval '1 microsecond', round((15 + random() * 20)::numeric, 2),"
                        " (30 + random() * 50)::real FROM generate_series(1, 50) d").rowcount
                    self.written += rows
                if tick % 10 == 0:
                    device = rng.randint(1, 50)
                    conn.execute("UPDATE devices SET firmware = %s WHERE id = %s",
                                 (f"fw-1.{tick // 10}", device))
                    conn.execute("UPDATE site_config SET value = %s WHERE key = 'sample_period_s'",
                                 (str(rng.randint(5, 60)),))  # notes stay as they are (TOAST)
                    self.written += 2
                if tick % 25 == 0:
                    deleted = conn.execute(
                        "DELETE FROM readings WHERE ts < now() - interval '3 seconds'").rowcount
                    self.written += deleted
                time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30, help="how long the sites write (30)")
    parser.add_argument("--sites", type=int, default=2, help="number of sites (2)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the temp dir (logs, configs) in place afterwards")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    base = Path(tempfile.mkdtemp(prefix="tributary-demo-"))
    servers: list[PgCluster | KafkaBroker] = []
    daemons: list[Daemon] = []
    ok = False
    try:
        say(f"working directory {base} (configs and logs)")
        bindir = ensure_postgres_installed()
        libs = ensure_kafka()
        say("starting Kafka (KRaft, one broker)")
        broker = KafkaBroker(base / "kafka", libs=libs).start()
        servers.append(broker)
        say("starting the cloud database")
        cloud = PgCluster("cloud", base, bindir=bindir).start()
        servers.append(cloud)
        cloud_dsn = cloud.create_database("cloud")
        sites: dict[str, str] = {}
        for i in range(1, args.sites + 1):
            name = f"plant-{i}"
            say(f"starting site {name}")
            cluster = PgCluster(f"site{i}", base, bindir=bindir).start()
            servers.append(cluster)
            dsn = cluster.create_database("factory")
            execute(dsn, *SCHEMA)
            sites[name] = dsn
            cfg = site_config(base / f"{name}.toml", name, dsn, broker.bootstrap_servers, "demo")
            daemons.append(Daemon("source", cfg, base, f"source-{name}").start())
        cfg = cloud_config(base / "cloud.toml", cloud_dsn, broker.bootstrap_servers, "demo",
                           "demo-sink")
        daemons.append(Daemon("sink", cfg, base, "sink").start())
        for name, dsn in sites.items():
            wait_until(lambda dsn=dsn: count(dsn, "SELECT count(*) FROM pg_replication_slots"
                                                  " WHERE active") == 1,
                       120, f"the source of {name} to stream", tuple(daemons))
        say(f"sources and sink running; sites write for {args.seconds:.0f} s "
            "(same device ids at every site)")
        workloads = [SiteWorkload(dsn, args.seconds, seed=i) for i, dsn in enumerate(sites.values())]
        for w in workloads:
            w.start()
        started = time.monotonic()
        while any(w.is_alive() for w in workloads) and not stop.is_set():
            time.sleep(3)
            cloud_rows = count(cloud_dsn, "SELECT count(*) FROM readings")
            site_rows = sum(count(dsn, "SELECT count(*) FROM readings") for dsn in sites.values())
            changes = sum(w.written for w in workloads)
            say(f"{time.monotonic() - started:5.0f} s  site changes {changes:>8,}  "
                f"readings at sites {site_rows:>7,}  in the cloud {max(cloud_rows, 0):>7,}")
            for d in daemons:
                if not d.alive():
                    raise RuntimeError(f"{d.name} stopped:\n{d.log()}")
        for w in workloads:
            if w.error is not None:
                raise RuntimeError(f"site workload failed: {w.error}")
        if stop.is_set():
            say("interrupted")
            return 130
        say("sites stopped writing; waiting for the cloud to catch up")
        for name, dsn in sites.items():
            sync(dsn, cloud_dsn, name, 120, tuple(daemons))
        say("comparing every table, site by site, row by row")
        print(f"{'site':<10} {'table':<20} {'site rows':>10} {'cloud rows':>11}  result")
        ok = True
        for name, dsn in sites.items():
            for table, columns in TABLES.items():
                site_rows_list = rows_of(dsn, table, columns)
                cloud_rows_list = rows_of(cloud_dsn, table, columns, where_site=name)
                same = site_rows_list == cloud_rows_list
                ok &= same
                print(f"{name:<10} {table:<20} {len(site_rows_list):>10,} "
                      f"{len(cloud_rows_list):>11,}  {'equal' if same else 'DIFFERENT'}")
        say("the cloud equals every site" if ok else "the cloud DIFFERS from a site: see above")
        return 0 if ok else 1
    except Exception as exc:
        say(f"failed: {exc}")
        return 1
    finally:
        for d in daemons:
            try:
                d.stop()
            except AssertionError as exc:
                say(str(exc))
        for server in reversed(servers):
            server.stop()
        if args.keep or not ok:
            say(f"logs and configs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
