"""``python -m devenv``: a local environment of real servers.

    python -m devenv fetch            # install PostgreSQL (apt, as root) + fetch the Kafka jars
    python -m devenv up --sites 2     # start SITE1..N + CLOUD clusters and a Kafka broker

``up`` prints ``SITE1_DSN=...``, ``CLOUD_DSN=...``, ``KAFKA=...`` lines and runs
until Ctrl-C / SIGTERM, then stops everything and removes its temp dir
(unless ``--dir`` was given).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from devenv.kafka import KafkaBroker, ensure_kafka
from devenv.postgres import PgCluster, ensure_postgres_installed


def _fetch(_: argparse.Namespace) -> int:
    bindir = ensure_postgres_installed()
    libs = ensure_kafka()
    print(f"postgres: {bindir}\nkafka: {libs}")
    return 0


def _up(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    bindir = ensure_postgres_installed()
    libs = None if args.no_kafka else ensure_kafka()
    base = Path(args.dir).absolute() if args.dir else Path(tempfile.mkdtemp(prefix="tributary-devenv-"))
    base.mkdir(parents=True, exist_ok=True)
    servers: list[PgCluster | KafkaBroker] = []
    lines: list[str] = []
    try:
        for i in range(1, args.sites + 1):
            site = PgCluster(f"site{i}", base, bindir=bindir).start()
            servers.append(site)
            lines.append(f"SITE{i}_DSN={site.dsn()}")
            if stop.is_set():
                return 130
        cloud = PgCluster("cloud", base, bindir=bindir).start()
        servers.append(cloud)
        lines.append(f"CLOUD_DSN={cloud.dsn()}")
        if libs is not None and not stop.is_set():
            broker = KafkaBroker(base / "kafka", libs=libs).start()
            servers.append(broker)
            lines.append(f"KAFKA={broker.bootstrap_servers}")
        if stop.is_set():
            return 130
        print("\n".join(lines), flush=True)
        print(f"devenv: running in {base}; Ctrl-C to stop", file=sys.stderr, flush=True)
        while not stop.wait(1.0):
            for s in servers:
                if not s.is_running():
                    print(f"devenv: {s!r} died; stopping", file=sys.stderr, flush=True)
                    return 1
        return 0
    finally:
        for s in reversed(servers):
            try:
                s.stop()
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                print(f"devenv: stopping {s!r} failed: {e}", file=sys.stderr)
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
        print("devenv: stopped", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="install PostgreSQL (apt, root only) and fetch the Kafka jars").set_defaults(func=_fetch)
    up = sub.add_parser("up", help="start site clusters, a cloud cluster and a Kafka broker")
    up.add_argument("--sites", type=int, default=2, help="number of site clusters (default 2)")
    up.add_argument("--dir", help="keep data here instead of a removed temp dir")
    up.add_argument("--no-kafka", action="store_true", help="do not start a Kafka broker")
    up.set_defaults(func=_up)
    args = parser.parse_args(argv)
    if args.command == "up" and args.sites < 0:
        parser.error("--sites must be >= 0")
    try:
        return args.func(args)
    except RuntimeError as e:
        print(f"devenv: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
