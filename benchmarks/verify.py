"""Benchmark of ``cdc verify``: time and peak memory on a large table, equal and with differences.

    python -m benchmarks.verify [--rows 1000000] [--chunk-rows 10000] [--differences 10]

Starts a site and a cloud PostgreSQL cluster (devenv) in a temporary directory, loads the same
rows into the site table and, with a site_id, into the cloud table (no pipeline: this measures
the comparison alone), then runs ``cdc verify`` twice as a child process: once on equal tables,
once after changing ``--differences`` cloud rows. Prints seconds, rows/s and the child's peak RSS.
It is a measurement, not a test: it fails only if verify's verdict is wrong.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devenv.pipeline import REPO, cloud_config, execute, site_config
from devenv.postgres import PgCluster, ensure_postgres_installed

ROWS_SQL = ("SELECT i % 1000 + 1, timestamptz '2025-01-01 00:00:00+00' + (i / 1000) * interval"
            " '1 second', 20 + 5 * sin(i), CASE WHEN i % 4 = 0 THEN 'note ' || i END"
            " FROM generate_series(0, {n} - 1) i")


def run_verify(site_cfg: Path, cloud_cfg: Path, chunk_rows: int) -> tuple[int, float, float, str]:
    """(exit code, seconds, peak RSS MB of the child, output)."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cdc.cli", "verify", "--config", str(site_cfg),
                           "--cloud", str(cloud_cfg), "--chunk-rows", str(chunk_rows),
                           "--settle", "0"], capture_output=True, text=True, cwd=REPO)
    seconds = time.monotonic() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return done.returncode, seconds, peak_mb, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--differences", type=int, default=10)
    args = parser.parse_args()
    bindir = ensure_postgres_installed()
    with tempfile.TemporaryDirectory(prefix="tributary-verify-") as tmp_name:
        tmp = Path(tmp_name)
        settings = {"shared_buffers": "256MB", "max_wal_size": "4GB"}
        site = PgCluster("site", tmp, settings=settings, bindir=bindir).start()
        cloud = PgCluster("cloud", tmp, settings=settings, bindir=bindir).start()
        try:
            site_dsn, cloud_dsn = site.create_database("site"), cloud.create_database("cloud")
            t0 = time.monotonic()
            execute(site_dsn, "CREATE TABLE readings (device_id int, ts timestamptz,"
                              " value float8, note text, PRIMARY KEY (device_id, ts))",
                    f"INSERT INTO readings {ROWS_SQL.format(n=args.rows)}", "ANALYZE readings")
            execute(cloud_dsn, "CREATE TABLE readings (site_id text, device_id int, ts timestamptz,"
                               " value float8, note text, PRIMARY KEY (site_id, device_id, ts))",
                    f"INSERT INTO readings SELECT 'bench', * FROM ({ROWS_SQL.format(n=args.rows)})"
                    " r", "ANALYZE readings")
            print(f"loaded {args.rows:,} rows on each side in {time.monotonic() - t0:.1f} s "
                  "(untimed)", flush=True)
            site_cfg = site_config(tmp / "site.toml", "bench", site_dsn, "127.0.0.1:1", "bench")
            cloud_cfg = cloud_config(tmp / "cloud.toml", cloud_dsn, "127.0.0.1:1", "bench", "g")
            code, seconds, peak, out = run_verify(site_cfg, cloud_cfg, args.chunk_rows)
            assert code == 0, out
            print(f"equal tables:       {seconds:6.1f} s  {args.rows / seconds:10,.0f} rows/s"
                  f"  peak RSS {peak:.0f} MB", flush=True)
            step = max(1, 1000 // max(1, args.differences))
            execute(cloud_dsn, f"UPDATE readings SET value = -1 WHERE device_id % {step} = 0 AND"
                               " ts = timestamptz '2025-01-01 00:05:00+00' AND device_id <= "
                               f"{step * args.differences}")
            code, seconds, peak, out = run_verify(site_cfg, cloud_cfg, args.chunk_rows)
            assert code == 1 and f"{args.differences:>8}  DIFFERS" in out, out
            print(f"{args.differences} rows differ:   {seconds:6.1f} s  {args.rows / seconds:10,.0f}"
                  f" rows/s  peak RSS {peak:.0f} MB (the larger of both runs)", flush=True)
        finally:
            site.stop()
            cloud.stop()


if __name__ == "__main__":
    main()
