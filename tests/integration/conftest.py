"""Fixtures of the pipeline tests (the servers come from tests/conftest.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.sites import Pipeline


@pytest.fixture
def pipeline_factory(tmp_path: Path, pg_factory: Any, kafka_broker: Any, unique_name: Any):
    made: list[Pipeline] = []

    def make(broker: Any = None, **kwargs: Any) -> Pipeline:
        p = Pipeline(tmp_path, pg_factory, broker or kafka_broker, unique_name, **kwargs)
        made.append(p)
        return p

    yield make
    for p in made:
        for d in p.daemons:
            if d.alive():
                d.proc.kill()  # type: ignore[union-attr]
                d.proc.wait(10)  # type: ignore[union-attr]
        for dsn in p.site_dsn.values():
            drop_slots(dsn)


def drop_slots(dsn: str, timeout: float = 10) -> None:
    """The test's slots go with it: clusters are shared, slots are few and each holds WAL."""
    deadline = time.monotonic() + timeout
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                rows = conn.execute(
                    "SELECT slot_name, active FROM pg_replication_slots"
                    " WHERE database = current_database()").fetchall()
                for name, active in rows:
                    if not active:
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                if all(not active for _, active in rows) or time.monotonic() > deadline:
                    return
                time.sleep(0.2)  # a killed source's walsender is still exiting
    except psycopg.OperationalError:
        pass  # the cluster is down (a crash test): its slots go with the session
