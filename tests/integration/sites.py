"""Sites, cloud and daemons for pipeline tests: fresh databases and topics per test."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from devenv.pipeline import (
    DEVICE_TABLES_DDL, MARKER_DDL, Daemon, cloud_config, count, execute, rows_of, site_config,
    sync, wait_until,
)

SCHEMA = [
    *DEVICE_TABLES_DDL,
    "CREATE TABLE tags (device_id int, tag text, note text, PRIMARY KEY (device_id, tag))",
    "ALTER TABLE tags REPLICA IDENTITY FULL",  # every column flagged as key; the PK is the key
    MARKER_DDL,
]
TABLES = {
    "public.devices": ["id", "name", "firmware", "installed", "updated_at"],
    "public.readings": ["device_id", "ts", "value", "quality"],
    "public.settings": ["key", "value", "blob"],
    "public.tags": ["device_id", "tag", "note"],
}
SEED = [
    "INSERT INTO devices (id, name, firmware, installed)"
    " SELECT g, 'dev-' || g, 'v1', date '2024-01-01' + g FROM generate_series(1, 20) g",
    "INSERT INTO readings SELECT d, timestamptz '2025-01-01 00:00+00' + m * interval '1 minute',"
    " d * 1.5 + m / 7.0, (m % 3)::smallint FROM generate_series(1, 20) d, generate_series(1, 50) m",
    # 12 kB of hex per blob: incompressible enough to stay out of line (TOAST)
    "INSERT INTO settings SELECT 'k' || g, 'value ' || g,"
    " (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 400) i)"
    " FROM generate_series(1, 5) g",
    "INSERT INTO tags SELECT g, 'zone', NULL FROM generate_series(1, 10) g",
]
TIMEOUT = 90


class Pipeline:
    """Sites, cloud and daemons of one test, with fresh databases and topics."""

    def __init__(self, tmp_path: Path, pg_factory: Callable[..., Any], kafka_broker: Any,
                 unique_name: Callable[[str], str], sites: tuple[str, ...] = ("a", "b"),
                 sink_extra: str = "", cluster_suffix: str = "",
                 registry_url: str | None = None, site_extra: str = "",
                 kafka_extra: str = "") -> None:
        self.tmp = tmp_path
        self.prefix = unique_name("t")
        self.kafka = kafka_broker.bootstrap_servers
        if registry_url:
            kafka_extra += f'\nschema_registry_url = "{registry_url}"'
        self.clusters: dict[str, Any] = {}
        cloud = self.clusters["cloud"] = pg_factory("cloud" + cluster_suffix)
        self.cloud_dsn = cloud.create_database(unique_name("cloud"))
        self.site_dsn: dict[str, str] = {}
        self.sources: dict[str, Daemon] = {}
        for site in sites:
            cluster = self.clusters[site] = pg_factory(f"site_{site}{cluster_suffix}")
            dsn = cluster.create_database(unique_name(f"site_{site}"))
            execute(dsn, *SCHEMA)
            self.site_dsn[site] = dsn
            cfg = site_config(tmp_path / f"{site}.toml", site, dsn, self.kafka, self.prefix,
                              slot=unique_name(f"slot_{site}"), kafka_extra=kafka_extra,
                              site_extra=site_extra)
            self.sources[site] = Daemon("source", cfg, tmp_path, f"source-{site}")
        cfg = cloud_config(tmp_path / "cloud.toml", self.cloud_dsn, self.kafka, self.prefix,
                           unique_name("group"), sink_extra, kafka_extra)
        self.sink = Daemon("sink", cfg, tmp_path, "sink")

    @property
    def daemons(self) -> tuple[Daemon, ...]:
        return (*self.sources.values(), self.sink)

    def start(self, streaming: bool = True) -> "Pipeline":
        """Start the daemons; with ``streaming``, wait until each source streams its slot (after
        any initial copy)."""
        for d in self.daemons:
            d.start()
        # the source creates its slot on start: wait for it before any change that must flow
        for site, dsn in (self.site_dsn.items() if streaming else ()):
            wait_until(lambda dsn=dsn: count(dsn, "SELECT count(*) FROM pg_replication_slots"
                                                  " WHERE active") == 1,
                       TIMEOUT, f"the slot of site {site} to be active", self.daemons)
        return self

    def seed(self, *statements: str) -> None:
        """Run ``statements`` at every site, then wait until the cloud has them."""
        for site, dsn in self.site_dsn.items():
            execute(dsn, *statements)
            self.sync(site)

    def sync(self, site: str) -> None:
        sync(self.site_dsn[site], self.cloud_dsn, site, TIMEOUT, self.daemons)

    def assert_equal(self, site: str) -> None:
        for table, columns in TABLES.items():
            site_rows = rows_of(self.site_dsn[site], table, columns)
            cloud_rows = rows_of(self.cloud_dsn, table, columns, where_site=site)
            assert cloud_rows == site_rows, f"{table} of site {site} differs in the cloud"

    def stop(self) -> None:
        codes = {d.name: d.stop() for d in self.daemons}
        assert all(c == 0 for c in codes.values()), codes
