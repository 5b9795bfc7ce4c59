"""Pytest plugin: real PostgreSQL clusters and a real Kafka broker.

Session fixtures
    pg_bindir      PostgreSQL server binaries (installed with apt when root and missing)
    pg_factory     ``pg_factory(name, **settings) -> PgCluster``, started; the same
                   name returns the same cluster (restarted if a test stopped or
                   kill9'd it), so tests can share clusters.  All are stopped at
                   session end.
    kafka_libs     the Kafka broker jars (fetched once into ~/.cache/tributary)
    kafka_broker   one KafkaBroker for the whole session (do not kill9 it; start
                   your own ``KafkaBroker(tmp_path, libs=kafka_libs)`` for crash tests)
    schema_registry  Apicurio Registry (Confluent API, BACKWARD compatibility), fetched
                   once into ~/.cache/tributary and started on first use
Function fixture
    unique_name    ``unique_name(prefix) -> str`` fresh topic/database/group names

Everything under tests/integration is marked ``integration``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from devenv import unique_name as _unique_name
from devenv.kafka import KafkaBroker, ensure_kafka
from devenv.postgres import PgCluster, ensure_postgres_installed
from devenv.registry import SchemaRegistryServer

_INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def pg_bindir() -> Path:
    return ensure_postgres_installed()


@pytest.fixture(scope="session")
def _pg_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the session's clusters live.

    As root, PostgreSQL runs as the ``postgres`` user, which must be able to
    traverse every parent directory; pytest keeps /tmp/pytest-of-root at 0700
    and re-tightens it whenever *any* pytest session starts, so the data dirs
    go to their own /tmp directory instead and only the server logs are
    copied into the session's tmp_path_factory dir ("pg-logs") at the end.
    """
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        base = Path(tempfile.mkdtemp(prefix="tributary-pg-"))
        logs = tmp_path_factory.mktemp("pg-logs")
        try:
            yield base
        finally:
            for log in base.glob("*/postgres.log"):
                shutil.copy(log, logs / f"{log.parent.name}.log")
            shutil.rmtree(base, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("pg")


@pytest.fixture(scope="session")
def pg_factory(pg_bindir: Path, _pg_base_dir: Path) -> Iterator[Callable[..., PgCluster]]:
    clusters: dict[str, tuple[PgCluster, dict[str, Any]]] = {}

    def factory(name: str, **settings: Any) -> PgCluster:
        if name in clusters:
            cluster, existing = clusters[name]
            if settings != existing:
                raise ValueError(
                    f"PostgreSQL cluster {name!r} already exists with settings {existing}, "
                    f"not {settings}; use another name"
                )
        else:
            cluster = PgCluster(name, _pg_base_dir, settings=settings, bindir=pg_bindir)
            clusters[name] = (cluster, dict(settings))
        if not cluster.is_running():
            cluster.start()
        return cluster

    yield factory
    errors = []
    for cluster, _ in clusters.values():
        try:
            cluster.stop()
        except Exception as e:  # noqa: BLE001 - stop the others too
            errors.append(f"{cluster!r}: {e}")
    if errors:
        raise RuntimeError("failed to stop PostgreSQL clusters:\n" + "\n".join(errors))


@pytest.fixture(scope="session")
def kafka_libs() -> Path:
    return ensure_kafka()


@pytest.fixture(scope="session")
def kafka_broker(kafka_libs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), libs=kafka_libs)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SchemaRegistryServer]:
    """A real schema registry (Apicurio, Confluent API), started on first use."""
    server = SchemaRegistryServer(tmp_path_factory.mktemp("registry")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    return _unique_name
