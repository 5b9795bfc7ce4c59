"""``cdc check``: is a site (or the cloud) ready? One result per check, each saying what to do."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from cdc.core.config import Config, redact_dsn
from cdc.core.errors import TributaryError
from cdc.runtime.topics import client_config
from cdc.source.catalog import compressed_batch_delete_on, timescaledb_version
from cdc.source.publication import list_tables
from cdc.source.slot import slot_state


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def check_kafka(config: Config, timeout: float = 10.0) -> CheckResult:
    kafka = config.kafka
    try:
        meta = AdminClient(client_config(kafka)).list_topics(timeout=timeout)
    except KafkaException as exc:
        return CheckResult("kafka", False, f"{kafka.bootstrap_servers} does not answer: {exc}")
    return CheckResult("kafka", True, f"{kafka.bootstrap_servers} answers "
                                      f"({len(meta.brokers)} broker(s), {len(meta.topics)} topics)")


def check_site(config: Config) -> list[CheckResult]:
    site = config.need_site()
    results: list[CheckResult] = []
    try:
        conn = psycopg.connect(site.dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        return [CheckResult("site database", False,
                            f"cannot connect to {redact_dsn(site.dsn)}: {str(exc).strip()}")]
    with conn:
        results.append(CheckResult("site database", True, f"connected to {redact_dsn(site.dsn)}"))
        wal_level = conn.execute("SHOW wal_level").fetchone()[0]  # type: ignore[index]
        results.append(CheckResult(
            "wal_level", wal_level == "logical",
            "logical" if wal_level == "logical" else
            f"is {wal_level}; run ALTER SYSTEM SET wal_level = logical and restart the server"))
        role, can_repl = conn.execute(
            "SELECT current_user, rolreplication OR rolsuper FROM pg_roles"
            " WHERE rolname = current_user").fetchone()  # type: ignore[misc]
        results.append(CheckResult(
            "replication privilege", bool(can_repl),
            f"role {role} may replicate" if can_repl else
            f"role {role} lacks REPLICATION; run ALTER ROLE {role} REPLICATION"))
        tables = list_tables(conn, site.tables, site.exclude)
        results.append(CheckResult(
            "tables", bool(tables),
            f"{len(tables)} table(s) selected by site.tables minus site.exclude" if tables else
            f"site.tables {site.tables} minus site.exclude {site.exclude} selects no table"))
        unreadable = [t.qualified for t in tables if not conn.execute(
            "SELECT has_table_privilege(format('%%I.%%I', %s::text, %s::text), 'SELECT')",
            (t.schema, t.name)).fetchone()[0]]  # type: ignore[index]
        results.append(CheckResult(
            "read access", not unreadable,
            "the role may read every selected table" if not unreadable else
            f"role {role} cannot SELECT from {', '.join(unreadable)}; GRANT SELECT on them"))
        problems = [t.identity_problem for t in tables if t.identity_problem]
        results.append(CheckResult(
            "replica identity", not problems,
            "every selected table has a primary key or usable replica identity" if not problems
            else "; ".join(p for p in problems if p)))
        if site.snapshot != "never":
            can = conn.execute(
                "SELECT CASE WHEN to_regnamespace('tributary') IS NULL"
                " THEN has_database_privilege(current_database(), 'CREATE')"
                " ELSE has_schema_privilege('tributary', 'CREATE,USAGE') END").fetchone()[0]  # type: ignore[index]
            results.append(CheckResult(
                "snapshot progress", bool(can),
                "the role may keep snapshot progress in schema tributary" if can else
                f"role {role} can neither create schema tributary nor write in it; run GRANT "
                f"CREATE ON DATABASE {conn.info.dbname} TO {role} (or set site.snapshot = "
                "\"never\")"))
        version = timescaledb_version(conn)
        if version:
            batch_delete = compressed_batch_delete_on(conn)
            database = conn.info.dbname
            results.append(CheckResult(
                "timescaledb", not batch_delete,
                f"TimescaleDB {version}; compressed batch deletes are decoded" if not batch_delete
                else f"TimescaleDB {version} deletes whole compressed batches invisibly to logical "
                     f"decoding; run ALTER DATABASE {database} SET "
                     "timescaledb.enable_compressed_direct_batch_delete = off"))
        try:
            state = slot_state(conn, site.slot_name)
            detail = (f"slot {site.slot_name} will be created on first run" if state is None else
                      f"slot {site.slot_name} exists, wal_status {state.wal_status}")
            results.append(CheckResult("slot", True, detail))
        except TributaryError as exc:
            results.append(CheckResult("slot", False, str(exc)))
    return results


def check_cloud(config: Config) -> list[CheckResult]:
    sink = config.need_sink()
    try:
        with psycopg.connect(sink.dsn, autocommit=True, connect_timeout=10) as conn:
            can_create = conn.execute(
                "SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()[0]  # type: ignore[index]
    except psycopg.Error as exc:
        return [CheckResult("cloud database", False,
                            f"cannot connect to {redact_dsn(sink.dsn)}: {str(exc).strip()}")]
    return [CheckResult("cloud database", True, f"connected to {redact_dsn(sink.dsn)}"),
            CheckResult("create privilege", bool(can_create),
                        "may create schemas (tributary progress tables, cloud tables)" if can_create
                        else "the role cannot CREATE in this database; grant it or pre-create "
                             "the tributary schema and the cloud tables")]


def run_checks(config: Config) -> list[CheckResult]:
    results: list[CheckResult] = []
    if config.site is not None:
        results += check_site(config)
    if config.sink is not None:
        results += check_cloud(config)
    results.append(check_kafka(config))
    return results
