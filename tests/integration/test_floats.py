"""float4 and float8 values arrive bit for bit (DESIGN: "Floats through text").

pgoutput sends a float as its shortest text; reading a float4's text as a double and narrowing
it rounds twice, which changed ``7.038531e-26`` into another float4. The values are those of
PostgreSQL's own float4 regression test (Paxson's hard-to-round decimals and its list of bit
patterns), random bit patterns drawn by hypothesis, NaN, ±Infinity and -0; site and cloud are
compared by ``float4send`` / ``float8send``, i.e. by their bits.
"""

from __future__ import annotations

import math
import struct
from typing import Callable

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from psycopg.types.numeric import Float4, Float8

from devenv.pipeline import execute
from tests.integration.sites import Pipeline

# decimal inputs that are hard to round (float4.sql: "Test for correct input rounding")
PAXSON = ["5e-20", "67e14", "985e15", "55895e-16", "7038531e-32", "702990899e-20", "3e-23",
          "57e18", "789e-35", "2539e-18", "76173e28", "887745e-11", "5382571e-37",
          "82381273e-35", "750486563e-38", "1.17549435e-38", "1.1754944e-38",
          "0.0", "1004.30", "-34.84", "1.2345678901234e+20", "1.2345678901234e-20",
          "NaN", "Infinity", "-Infinity", "-0", "3.4028235e+38", "1e-45"]
# float4.sql's bit patterns ("test output (and round-trip safety) of various values")
BITS4 = [int(b, 16) for b in """
00000001 00000002 00000003 00000010 00000011 00000100 00000101 00004000 00004001 00080000
00080001 0053c4f4 006c85c4 0041ca76 004b7678 00000007 00424fe2 007ffff0 007ffff1 007ffffe
007fffff 00000000 00800000 00800001 00800004 00800005 00800006 008002f1 008002f2 008002f3
00800e17 00800e18 00800e19 01000001 01102843 01a52c98 0219c229 02e4464d 037343c1 03a91b36
047ada65 0496fe87 0550844f 05999da3 060ea5e2 06e63c45 07f1e548 0fc5282b 1f850283 2874a9d6
3356bf94 3356bf95 3356bf96 33d6bf94 33d6bf95 33d6bf96 34a10faf 34a10fb0 34a10fb1 350637bc
350637bd 350637be 35719786 35719787 35719788 358637bc 358637bd 358637be 36a7c5ab 36a7c5ac
36a7c5ad 3727c5ab 3727c5ac 3727c5ad 38d1b714 38d1b715 38d1b716 38d1b717 38d1b718 38d1b719
38d1b71a 38d1b71b 38d1b71c 38d1b71d 38dffffe 38dfffff 38e00000 38efffff 38f00000 38f00001
3a83126e 3a83126f 3a831270 3c23d709 3c23d70a 3c23d70b 3dcccccc 3dcccccd 3dccccce 3dcccd6f
3dcccd70 3dcccd71 3effffff 3f000000 3f000001 3f333332 3f333333 3f333334 3f666665 3f666666
3f666667 3f7d70a3 3f7d70a4 3f7d70a5 3f7fbe76 3f7fbe77 3f7fbe78 3f7ff971 3f7ff972 3f7ff973
3f7fff57 3f7fff58 3f7fff59 3f7fffee 3f7fffef 3f7ffff0 3f7ffff1 3f7ffff2 3f7ffff3 3f7ffff4
3f7ffff5 3f7ffff6 3f7ffff7 3f7ffff8 3f7ffff9 3f7ffffa 3f7ffffb 3f7ffffc 3f7ffffd 3f7ffffe
3f7fffff 3f800000 3f800001 3f800002 3f800003 3f800004 3f800005 3f800006 3f800007 3f800008
3f800009 3f80000f 3f800010 3f800011 3f800012 3f800013 3f800014 3f800017 3f800018 3f800019
3f80001a 3f80001b 3f80001c 3f800029 3f80002a 3f80002b 3f800053 3f800054 3f800055 3f800346
3f800347 3f800348 3f8020c4 3f8020c5 3f8020c6 3f8147ad 3f8147ae 3f8147af 3f8ccccc 3f8ccccd
3f8cccce 3fc90fdb 402df854 40490fdb 409fffff 40a00000 40a00001 40afffff 40b00000 40b00001
411fffff 41200000 41200001 42c7ffff 42c80000 42c80001 4479ffff 447a0000 447a0001 461c3fff
461c4000 461c4001 47c34fff 47c35000 47c35001 497423ff 49742400 49742401 4b18967f 4b189680
4b189681 4cbebc1f 4cbebc20 4cbebc21 4e6e6b27 4e6e6b28 4e6e6b29 501502f8 501502f9 501502fa
51ba43b6 51ba43b7 51ba43b8 1f6c1e4a 59be6cea 5d5ab6c4 2cc4a9bd 15ae43fd 2cf757ca 665ba998
743c3324 47f1205a 4640e6ae 449a5225 42f6e9d5 414587dd 3f9e064b 4c000004 50061c46 510006a8
48951f84 45fd1840 39800000 3b200000 3b900000 3bd00000 63800000 4b000000 4b800000 4c000001
4c800b0d 00d24584 800000b0 00d90b88 45803f34 4f9f24f7 3a8722c3 5c800041 15ae43fd 5d4cccfb
4c800001 57800ed8 5f000000 700000f0 5f23e9ac 5e9502f9 5e8012b1 3c000028 60cde861 03aa2a50
43480000 4c000000 5D1502F9 5D9502F9 5E1502F9 3f99999a 3f9d70a4 3f9df3b6 3f9e0419 3f9e0610
3f9e064b 3f9e0651 03d20cfe 7f7fffff 7f800000 ff800000 80000000""".split()]


def f4_of_bits(bits: int) -> float:
    value = struct.unpack("<f", struct.pack("<I", bits))[0]
    return math.nan if value != value else value  # a NaN's payload is not part of its text


def f8_of_bits(bits: int) -> float:
    value = struct.unpack("<d", struct.pack("<Q", bits))[0]
    return math.nan if value != value else value


def insert_text(dsn: str, first_id: int, texts: list[str]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO floats VALUES (%s, %s::float4, %s::float8)",
                        [(first_id + i, t, t) for i, t in enumerate(texts)])


def insert_bits(dsn: str, first_id: int, bits4: list[int], bits8: list[int]) -> None:
    """Values by their bits, sent in binary (no text on the way in)."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        rows = [(first_id + i, Float4(f4_of_bits(b4)), Float8(f8_of_bits(b8)))
                for i, (b4, b8) in enumerate(zip(bits4, bits8))]
        cur.executemany("INSERT INTO floats VALUES (%b, %b, %b)", rows)


def bits_of(dsn: str, where_site: str | None = None) -> list[tuple]:
    query = "SELECT id, float4send(f4), float8send(f8) FROM floats"
    if where_site is not None:
        query += " WHERE site_id = %s"
    with psycopg.connect(dsn) as conn:
        return conn.execute(query + " ORDER BY id",
                            () if where_site is None else (where_site,)).fetchall()


def assert_same_bits(p: Pipeline) -> None:
    p.sync("a")
    site, cloud = bits_of(p.site_dsn["a"]), bits_of(p.cloud_dsn, "a")
    assert len(cloud) == len(site)
    differ = [(s[0], bytes(s[1]).hex(), bytes(c[1]).hex(), bytes(s[2]).hex(), bytes(c[2]).hex())
              for s, c in zip(site, cloud) if s != c]
    assert not differ, f"(id, f4 site, f4 cloud, f8 site, f8 cloud) that differ: {differ}"


@pytest.fixture
def floats(pipeline_factory: Callable[..., Pipeline]) -> Pipeline:
    p = pipeline_factory(sites=("a",))
    execute(p.site_dsn["a"], "CREATE TABLE floats (id int PRIMARY KEY, f4 real,"
                             " f8 double precision)")
    return p.start()


def test_postgresql_float4_edge_values_arrive_bit_for_bit(floats: Pipeline) -> None:
    dsn = floats.site_dsn["a"]
    insert_text(dsn, 1, PAXSON)
    insert_bits(dsn, 1000, BITS4, [0x7FF0000000000000, 0xFFF0000000000000, 0x8000000000000000,
                                   0x0000000000000001, 0x7FEFFFFFFFFFFFFF, 0x3FB999999999999A]
                * (len(BITS4) // 6 + 1))
    # updates carry the values in before-images too (REPLICA IDENTITY FULL is not needed)
    execute(dsn, "UPDATE floats SET f8 = f4 WHERE id % 3 = 0")
    assert_same_bits(floats)
    floats.stop()


@settings(max_examples=4, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(bits=st.lists(st.tuples(st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 64 - 1)),
                     min_size=1, max_size=300))
def test_random_float_bit_patterns_arrive_bit_for_bit(floats: Pipeline,
                                                      bits: list[tuple[int, int]]) -> None:
    dsn = floats.site_dsn["a"]
    with psycopg.connect(dsn) as conn:
        first = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM floats").fetchone()[0]
    insert_bits(dsn, first, [b[0] for b in bits], [b[1] for b in bits])
    assert_same_bits(floats)
