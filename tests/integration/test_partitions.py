"""A partitioned site table is one cloud table, kept whole, rows moving between partitions
included (DESIGN: "Partitioned tables")."""

from __future__ import annotations

from typing import Callable

from devenv.pipeline import count, execute, rows_of
from tests.integration.sites import Pipeline

DDL = [
    "CREATE TABLE measurements (id int, region text, v int, PRIMARY KEY (id, region))"
    " PARTITION BY LIST (region)",
    "CREATE TABLE measurements_eu PARTITION OF measurements FOR VALUES IN ('eu')",
    "CREATE TABLE measurements_us PARTITION OF measurements FOR VALUES IN ('us')",
    "CREATE TABLE measurements_other PARTITION OF measurements DEFAULT",
    "INSERT INTO measurements SELECT g, (ARRAY['eu', 'us', 'ap'])[g % 3 + 1], g"
    " FROM generate_series(1, 30) g",
]
COLUMNS = ["id", "region", "v"]


def test_a_partitioned_table_is_one_cloud_table(
        pipeline_factory: Callable[..., Pipeline]) -> None:
    p = pipeline_factory(sites=("a",))
    a = p.site_dsn["a"]
    execute(a, *DDL)  # copied by the initial copy, through the partitioned table
    p.start()
    execute(a, "INSERT INTO measurements VALUES (100, 'us', 1), (101, 'xx', 2)",
            "UPDATE measurements SET v = v + 1000 WHERE id % 2 = 0",
            "UPDATE measurements SET region = 'eu' WHERE id IN (2, 101)",  # moves partition
            "DELETE FROM measurements WHERE id = 4")
    p.sync("a")
    assert rows_of(p.cloud_dsn, "public.measurements", COLUMNS, where_site="a") == \
        rows_of(a, "public.measurements", COLUMNS)
    assert count(p.cloud_dsn, "SELECT count(*) FROM pg_tables WHERE tablename LIKE"
                              " 'measurements_%'") == 0  # no cloud table per partition
    execute(a, "TRUNCATE measurements", "INSERT INTO measurements VALUES (1, 'eu', 1)")
    p.sync("a")
    assert rows_of(p.cloud_dsn, "public.measurements", COLUMNS, where_site="a") == \
        [("1", "eu", "1")]
    p.stop()
