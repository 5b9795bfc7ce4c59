"""An unreachable broker is waited for with backoff and logged, never a crash loop."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from devenv.pipeline import Daemon, cloud_config, execute, site_config


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_source_and_sink_wait_for_an_unreachable_broker(tmp_path: Path, pg_factory: Any,
                                                        unique_name: Any) -> None:
    kafka = f"127.0.0.1:{closed_port()}"
    site_dsn = pg_factory("site_a").create_database(unique_name("nokafka"))
    execute(site_dsn, "CREATE TABLE t (id int PRIMARY KEY)")
    cloud_dsn = pg_factory("cloud").create_database(unique_name("nokafka"))
    source = Daemon("source", site_config(tmp_path / "s.toml", "a", site_dsn, kafka, "nk",
                                          slot=unique_name("slot")), tmp_path, "source").start()
    sink = Daemon("sink", cloud_config(tmp_path / "c.toml", cloud_dsn, kafka, "nk",
                                       unique_name("g")), tmp_path, "sink").start()
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if "interrupted; retrying" in source.log_path.read_text() and \
                    "Connection refused" in sink.log_path.read_text():
                break
            time.sleep(0.5)
        source_log, sink_log = source.log_path.read_text(), sink.log_path.read_text()
        assert source.alive() and sink.alive(), source_log + sink_log
        assert "does not answer" in source_log and "interrupted; retrying" in source_log
        # librdkafka's connection errors reach our JSON log, once a minute, not every second
        refused = [line for line in sink_log.splitlines() if "Connection refused" in line]
        assert refused and all(line.startswith("{") for line in refused), sink_log
        assert len(refused) <= 3, refused
    finally:
        assert source.stop() == 0 and sink.stop() == 0
