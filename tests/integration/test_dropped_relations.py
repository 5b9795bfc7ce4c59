"""A dropped table leaves the source's relation state only once the stream is past its drop.

On a real site: pgoutput messages read from a slot (SQL interface), the source's catalog query
for dropped OIDs, and the rule of cdc.source.dropped. A table that is still there keeps decoding.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from cdc.source.dropped import DroppedRelations
from tests.collecting_builder import CollectingBuilder
from cdc.source.pgoutput import Commit, decode_message
from cdc.source.catalog import dropped_relations
from tests.unit.test_event_builder import SITE

pytestmark = pytest.mark.integration


def read(conn: psycopg.Connection, slot: str, builder: CollectingBuilder) -> tuple[int, int]:
    """Feed the slot's pending messages to the builder: (records, last Commit's end LSN)."""
    rows = conn.execute(
        "SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL,"
        " 'proto_version', '1', 'publication_names', 'pub')", (slot,)).fetchall()
    records, end = 0, 0
    for (data,) in rows:
        msg = decode_message(bytes(data))
        records += len(builder.handle(msg))
        if isinstance(msg, Commit):
            end = msg.end_lsn
    return records, end


def test_dropped_table_is_forgotten_after_the_stream_passes_the_drop(
        pg_factory: Any, unique_name: Any) -> None:
    dsn = pg_factory("site_a").create_database(unique_name("dropped"))
    slot = unique_name("dropped_slot")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")  # the slot decodes only flushed WAL
        conn.execute("CREATE TABLE gone (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY)")
        conn.execute("CREATE PUBLICATION pub FOR TABLE gone, kept")
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        try:
            gone, kept = (conn.execute("SELECT %s::regclass::oid", (t,)).fetchone()[0]
                          for t in ("gone", "kept"))
            builder = CollectingBuilder(SITE)
            conn.execute("INSERT INTO gone VALUES (1)")
            conn.execute("INSERT INTO kept VALUES (1)")
            read(conn, slot, builder)
            assert builder.relations.oids() == {gone, kept}

            conn.execute("DROP TABLE gone")
            dropped = DroppedRelations()
            found, at = dropped_relations(conn, builder.relations.oids() | {4_000_000_000})
            assert found == {gone, 4_000_000_000}  # an OID above 2^31 too
            dropped.note(found, at)
            assert dropped.due(at - 1) == set()  # the stream has not passed the drop yet

            conn.execute("INSERT INTO kept VALUES (2)")
            records, end = read(conn, slot, builder)
            assert end >= at
            builder.forget(dropped.due(end))
            assert builder.relations.oids() == {kept}
            conn.execute("INSERT INTO kept VALUES (3)")
            assert read(conn, slot, builder)[0] == 3  # Begin, the insert, Commit
            with conn.transaction():  # a snapshot that may predate what the stream described
                assert dropped_relations(conn, {4_000_000_000}) == (set(), 0)
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
