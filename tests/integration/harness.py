"""Pipeline test helpers: they live in devenv.pipeline, shared with the demo and the benchmark."""

from devenv.pipeline import (  # noqa: F401
    MARKER_DDL, REPO, Daemon, cloud_config, count, execute, rows_of, site_applied_lsn,
    site_config, sync, wait_until,
)
