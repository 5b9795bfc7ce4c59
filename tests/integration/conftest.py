"""Fixtures of the pipeline tests (the servers come from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
