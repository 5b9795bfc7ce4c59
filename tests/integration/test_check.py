"""``cdc check`` on real servers: one line per check, exit 0 only when all hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner

from cdc.cli import main
from devenv.pipeline import execute, site_config


def run_check(path: Path) -> tuple[int, dict[str, str]]:
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    lines = {}
    for line in result.output.splitlines():
        status, _, rest = line.partition("  ")
        name, _, detail = rest.partition(": ")
        lines[name.strip()] = f"{status.strip()} {detail}"
    return result.exit_code, lines


def test_ready_site_passes_every_check(tmp_path: Path, pg_factory: Any, kafka_broker: Any,
                                       unique_name: Any) -> None:
    dsn = pg_factory("site_a").create_database(unique_name("check"))
    execute(dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    cfg = site_config(tmp_path / "s.toml", "a", dsn, kafka_broker.bootstrap_servers, "chk")
    code, lines = run_check(cfg)
    assert code == 0, lines
    assert set(lines) >= {"wal_level", "replication privilege", "replica identity", "kafka",
                          "read access", "tables"}
    assert all(v.startswith("ok") for v in lines.values()), lines


def test_problems_are_named_with_what_to_run(tmp_path: Path, pg_factory: Any,
                                             unique_name: Any) -> None:
    dsn = pg_factory("site_replica_level", wal_level="replica").create_database(unique_name("chk"))
    execute(dsn, "CREATE TABLE keyless (v int)", "CREATE TABLE ok (id int PRIMARY KEY)",
            "CREATE ROLE reader LOGIN", "GRANT SELECT ON ok TO reader")
    reader_dsn = dsn.replace("user=postgres", "user=reader")
    cfg = site_config(tmp_path / "s.toml", "a", reader_dsn, "127.0.0.1:1", "chk")
    code, lines = run_check(cfg)
    assert code == 1
    assert lines["wal_level"].startswith("FAIL") and "wal_level = logical" in lines["wal_level"]
    assert lines["replication privilege"].startswith("FAIL") and "ALTER ROLE reader REPLICATION" \
        in lines["replication privilege"]
    assert "public.keyless" in lines["replica identity"] and "REPLICA IDENTITY FULL" \
        in lines["replica identity"]
    assert lines["read access"].startswith("FAIL") and "public.keyless" in lines["read access"]
    assert lines["kafka"].startswith("FAIL")


def test_cloud_config_checks_database_and_kafka(tmp_path: Path, pg_factory: Any,
                                                kafka_broker: Any, unique_name: Any) -> None:
    from devenv.pipeline import cloud_config
    dsn = pg_factory("cloud").create_database(unique_name("chk"))
    cfg = cloud_config(tmp_path / "c.toml", dsn, kafka_broker.bootstrap_servers, "chk", "g")
    code, lines = run_check(cfg)
    assert code == 0 and set(lines) == {"cloud database", "create privilege", "kafka"}, lines
    bad = cloud_config(tmp_path / "bad.toml", dsn.replace("dbname=", "dbname=missing_"),
                       kafka_broker.bootstrap_servers, "chk", "g")
    code, lines = run_check(bad)
    assert code == 1 and lines["cloud database"].startswith("FAIL"), lines
    assert "does not exist" in lines["cloud database"]
