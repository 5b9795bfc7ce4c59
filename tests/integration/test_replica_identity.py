"""Replica identity as PostgreSQL documents it: the row identity the cloud keys rows by."""

from __future__ import annotations

from typing import Callable

from devenv.pipeline import execute, rows_of, wait_until
from tests.integration.sites import TIMEOUT, Pipeline

TABLES = [
    # USING INDEX: the unique index's columns identify a row, not the primary key
    "CREATE TABLE meters (id int PRIMARY KEY, serial text NOT NULL, site_code int NOT NULL,"
    " reading numeric(8,1))",
    "CREATE UNIQUE INDEX meters_serial ON meters (serial, site_code)",
    "ALTER TABLE meters REPLICA IDENTITY USING INDEX meters_serial",
    # FULL with a primary key: the primary key stays the identity
    "CREATE TABLE notes (id int PRIMARY KEY, body text)",
    "ALTER TABLE notes REPLICA IDENTITY FULL",
    # NOTHING: updates and deletes cannot be replicated: kept out, named
    "CREATE TABLE blind (id int PRIMARY KEY, v text)",
    "ALTER TABLE blind REPLICA IDENTITY NOTHING",
]
CHANGES = [
    "INSERT INTO meters SELECT g, 'SN' || g, g % 3, g * 1.5 FROM generate_series(1, 30) g",
    "UPDATE meters SET reading = reading + 1 WHERE id % 2 = 0",
    "UPDATE meters SET serial = serial || '-b' WHERE id <= 5",  # an identity change
    "DELETE FROM meters WHERE id BETWEEN 20 AND 24",
    "INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 10) g",
    "UPDATE notes SET body = NULL WHERE id = 3",
    "UPDATE notes SET id = 100 WHERE id = 4",
    "DELETE FROM notes WHERE id = 5",
    "INSERT INTO blind VALUES (1, 'x')",
    "UPDATE blind SET v = 'y'",  # works at the site: blind is not in the publication
]


def test_using_index_full_and_nothing(pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",))
    a = p.site_dsn["a"]
    execute(a, *TABLES)
    p.start()
    execute(a, *CHANGES)
    p.sync("a")
    for table, cols in [("public.meters", ["serial", "site_code", "id", "reading"]),
                        ("public.notes", ["id", "body"])]:
        assert rows_of(p.cloud_dsn, table, cols, where_site="a") == rows_of(a, table, cols), table
    log = p.sources["a"].log()
    assert "table not replicated: public.blind: REPLICA IDENTITY NOTHING" in log, log
    assert "ALTER TABLE public.blind REPLICA IDENTITY" in log
    assert rows_of(p.cloud_dsn, "public.blind", ["id"], where_site="a") == []
    # the cloud keys meters by the identity index, notes by its primary key
    cloud_keys = rows_of(p.cloud_dsn, "pg_catalog.pg_indexes", ["tablename", "indexdef"])
    defs = {t: d for t, d in cloud_keys if t in ("meters", "notes")}
    assert "(site_id, serial, site_code)" in defs["meters"], defs
    assert "(site_id, id)" in defs["notes"], defs
    p.stop()
