"""What one site's events may reach in the cloud (issue 13): sites are outside the data centre
and one may be compromised. Its events name the tables, columns and types the sink creates and
writes; the sink's bookkeeping (schema ``tributary``), the system catalogs and a column that
would choose the site of a row are not a site's to write, and each is refused by name while
the other sites flow.

The compromised sites here run the project's own event builder on made-up relations and
publish to their topics, as a site running altered code could; Kafka, the sink and the cloud
are real.
"""

from __future__ import annotations

from typing import Callable

import psycopg
from confluent_kafka import Producer

from cdc.core.config import load_config
from cdc.core.types.catalog import TypeDef
from cdc.core.types.mapping import ColumnType
from cdc.core.types.text import STRING
from cdc.runtime.schema_store import SchemaPublisher
from cdc.source.event_builder import SiteIdentity
from cdc.source.pgoutput import Begin, Column, Commit, Insert, Relation
from devenv.pipeline import count, execute, wait_until
from tests.collecting_builder import CollectingBuilder
from tests.integration.sites import TIMEOUT, Pipeline

MOOD_OID = 99001
#: forged site -> (its one table, the row it inserts, what the refusal must name)
FORGED = {
    "x1": (Relation(91001, "tributary", "evil", "d", (Column(1, "id", 23, -1),
                                                         Column(0, "note", 25, -1))),
           (b"1", b"bookkeeping"), "tributary.evil"),
    "x2": (Relation(91002, "information_schema", "evil", "d", (Column(1, "id", 23, -1),)),
           (b"2",), "information_schema.evil"),
    "x3": (Relation(91003, "public", "evil", "d", (Column(1, "id", 23, -1),
                                                      Column(0, "site_id", 25, -1))),
           (b"3", b"a"), "site_id"),
    "x4": (Relation(91004, "public", "moods", "d", (Column(1, "id", 23, -1),
                                                       Column(0, "mood", MOOD_OID, -1))),
           (b"4", b"sad"), "tributary.mood"),
}


def _mood(oid: int, typmod: int) -> ColumnType:
    return ColumnType("tributary.mood", STRING,
                      defs=(TypeDef("tributary", "mood", "enum", labels=("sad", "ok")),))


def forge(p: Pipeline, site: str, rel: Relation, row: tuple[bytes, ...]) -> None:
    """One transaction of ``site`` inserting ``row`` into ``rel``, on the site's topic."""
    kafka = load_config(p.sink.config).kafka
    publisher = SchemaPublisher(kafka)
    builder = CollectingBuilder(SiteIdentity(site, "7300000000000000009", 1, f"slot_{site}",
                                             "forged"), lookup=_mood,
                                on_new_schema=publisher.publish)
    builder.handle(rel)
    records = builder.handle(Begin(0x1000, 0, 700))
    records += builder.handle(Insert(rel.oid, row))
    records += builder.handle(Commit(0, 0x1000, 0x1001, 0))
    producer = Producer({"bootstrap.servers": p.kafka, "enable.idempotence": True})
    for key, value in records:
        producer.produce(kafka.site_topic(site), value, key, 0)
    assert producer.flush(30) == 0


def test_a_site_cannot_reach_the_bookkeeping_the_catalogs_or_another_sites_rows(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",))
    for site, (rel, row, _) in FORGED.items():
        forge(p, site, rel, row)
    p.start()
    log = ""
    for site, (rel, _, named) in FORGED.items():
        wait_until(lambda site=site: f"site {site} stopped" in p.sink.log(), TIMEOUT,
                   f"the sink to refuse forged site {site}", p.daemons)
        log = p.sink.log()
        line = next(line for line in log.splitlines() if f"site {site} stopped" in line)
        assert named in line and "reserved" in line, line
    cloud = p.cloud_dsn
    assert count(cloud, "SELECT count(*) FROM pg_class c JOIN pg_namespace n"
                        " ON n.oid = c.relnamespace WHERE c.relname IN ('evil', 'moods')") == 0
    assert count(cloud, "SELECT count(*) FROM pg_type WHERE typname = 'mood'") == 0
    # the honest site flows on
    execute(p.site_dsn["a"], "INSERT INTO devices (id, name) VALUES (1, 'one')")
    p.sync("a")
    assert count(cloud, "SELECT count(*) FROM public.devices WHERE site_id = 'a'") == 1
    p.stop()


#: identifiers a site may well have: quotes, spaces, Unicode, reserved words, 63 bytes
HOSTILE_TABLE = 'We said "hi"; DROP TABLE x; -- ünï'
LONGEST = "l" * 63
HOSTILE_COLUMNS = ['"quoted" col', "select", "Mixed Case", "ünïcødé ✓", LONGEST, "a.b"]


def test_hostile_identifiers_replicate(pipeline_factory: Callable[..., Pipeline]) -> None:
    from psycopg import sql

    p = pipeline_factory(sites=("a",))
    a = p.site_dsn["a"]
    table = sql.Identifier("public", HOSTILE_TABLE)
    columns = [sql.Identifier(c) for c in HOSTILE_COLUMNS]
    with psycopg.connect(a, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, {})").format(
            table, sql.SQL(", ").join(sql.SQL("{} text").format(c) for c in columns)))
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY)").format(
            sql.Identifier("public", LONGEST)))
    p.start()
    with psycopg.connect(a, autocommit=True) as conn:
        for i in range(3):
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, {})").format(
                table, sql.SQL(", ").join(sql.Placeholder() * len(columns))),
                [i] + [f"{c} {i}" for c in HOSTILE_COLUMNS])
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s)").format(
                sql.Identifier("public", LONGEST)), (i,))
        conn.execute(sql.SQL("UPDATE {} SET {} = 'changed' WHERE id = 1").format(
            table, columns[0]))
        conn.execute(sql.SQL("DELETE FROM {} WHERE id = 2").format(table))
    p.sync("a")
    def select(where: str) -> sql.Composed:
        return sql.SQL("SELECT id, {} FROM {} {} ORDER BY id").format(
            sql.SQL(", ").join(columns), table, sql.SQL(where))

    with psycopg.connect(a) as conn:
        site_rows = conn.execute(select("")).fetchall()
    with psycopg.connect(p.cloud_dsn) as conn:
        cloud_rows = conn.execute(select("WHERE site_id = 'a'")).fetchall()
        longest = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE site_id = 'a'").format(
            sql.Identifier("public", LONGEST))).fetchone()
    assert cloud_rows == site_rows and len(site_rows) == 2
    assert longest == (3,)
    p.stop()


def test_a_publication_for_all_tables_streams_only_the_selected_ones(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    """An administrator made the publication beforehand FOR ALL TABLES (the site role may not
    own the tables). The slot then carries every table: the source sends only those
    ``site.tables`` selects, never the site's own bookkeeping (schema tributary), and the
    site flows on."""
    p = pipeline_factory(sites=("a",))
    a = p.site_dsn["a"]
    publication = load_config(p.sources["a"].config).need_site().publication
    execute(a, "CREATE SCHEMA other", "CREATE TABLE other.secret (id int PRIMARY KEY, v text)",
            f"CREATE PUBLICATION {publication} FOR ALL TABLES")
    p.start()
    execute(a, "INSERT INTO other.secret VALUES (1, 'not selected')",
            "INSERT INTO devices (id, name) VALUES (1, 'one')")
    p.sync("a")
    cloud = p.cloud_dsn
    assert count(cloud, "SELECT count(*) FROM pg_tables WHERE schemaname = 'other'") == 0
    assert count(cloud, "SELECT count(*) FROM pg_tables WHERE schemaname = 'tributary'"
                        " AND tablename IN ('snapshot_progress', 'slots')") == 0
    assert count(cloud, "SELECT count(*) FROM public.devices WHERE site_id = 'a'") == 1
    assert "site a stopped" not in p.sink.log()
    p.stop()
