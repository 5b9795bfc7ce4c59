"""Removing a site from the cloud: its rows in every cloud table and its progress, at once.

The cloud tables a site wrote to are those ``tributary.site_columns`` lists for it (the sink
records them as it prepares each table). Everything goes in one transaction, children before
parents does not matter with foreign keys declared DEFERRABLE INITIALLY DEFERRED (README), and
the site's offsets go with it so a topic of the same name starts over. The source must be
stopped first, or its next events bring the site back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from cdc.core import ledger
from cdc.core.config import KafkaConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Removed:
    table: str
    rows: int


def remove_site(conn: psycopg.Connection, site_id: str, site_column: str,
                kafka: KafkaConfig) -> list[Removed]:
    """Delete the site's rows and progress in one transaction; returns rows per table."""
    removed = []
    with conn.transaction():
        tables = ledger.tables_of_site(conn, site_id)
        for schema, table in tables:
            cur = conn.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(
                sql.Identifier(schema, table), sql.Identifier(site_column)), (site_id,))
            removed.append(Removed(f"{schema}.{table}", cur.rowcount))
            log.info("removed site rows", extra={"site": site_id, "table": f"{schema}.{table}",
                                                 "rows": cur.rowcount})
        ledger.forget_site(conn, site_id, kafka.site_topic(site_id))
    return removed
