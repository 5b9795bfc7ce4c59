"""The applier's statements find a few rows of a large cloud table through its key index.

A stage (session temp table) is never analyzed by autovacuum; PostgreSQL then assumes it holds
ten pages of rows, so DELETE ... USING stage hashed the whole cloud table for one key: the sink
fell behind a modest workload once a site had 100,000 rows (found by the fault suite).
"""

from __future__ import annotations

from typing import Any

import psycopg

from cdc.core import ledger
from cdc.core.types.integers import LONG
from cdc.core.types.text import STRING
from sinks.applier import Applier
from sinks.batcher import Delete, Upsert
from sinks.changes import ColumnDef, TableVersion
from sinks.tables import CloudTables

DEVICES = TableVersion(1, "public", "devices", (ColumnDef("id", "id", "integer", True, LONG),
                                                ColumnDef("name", "name", "text", False, STRING)))


def seq_scans(conn: psycopg.Connection) -> int:
    """Sequential scans of the cloud table by this session not yet reported (they are reported
    between transactions, never inside one: compare two readings in one transaction)."""
    row = conn.execute("SELECT seq_scan FROM pg_stat_xact_user_tables"
                       " WHERE relid = 'public.devices'::regclass").fetchone()
    return int(row[0]) if row else 0


def test_a_few_deletes_and_upserts_use_the_key_index(pg_factory: Any, unique_name: Any) -> None:
    dsn = pg_factory("cloud").create_database(unique_name("plans"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            ledger.ensure_schema(conn)
    with psycopg.connect(dsn) as conn:
        applier = Applier(conn, CloudTables("site_id", {}, True, dsn))
        rows = {(i,): {"id": i, "name": f"d{i}"} for i in range(1, 50001)}
        applier.apply("a", [Upsert(DEVICES, rows)])
        conn.commit()
        applier.transaction_ended()
        conn.execute("ANALYZE public.devices")
        conn.commit()
        for n in range(3):  # the same stages again, in later transactions
            before = seq_scans(conn)
            applier.apply("a", [Delete(DEVICES, {(n + 7,): {"id": n + 7}}),
                                Upsert(DEVICES, {(n + 9,): {"id": n + 9, "name": "x"}}),
                                Delete(DEVICES, {(n + 11,): {"id": n + 11}})])
            assert seq_scans(conn) == before, f"transaction {n}: the cloud table was scanned whole"
            conn.commit()
            applier.transaction_ended()
        count = conn.execute("SELECT count(*) FROM public.devices").fetchone()
        assert count == (50000 - 5,)
