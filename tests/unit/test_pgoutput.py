"""Tests of cdc.source.pgoutput on streams recorded from real servers, on hand-built bytes and on random
messages, with the independent test-side encoder in tests/pgoutput_encoder.py."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import struct
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc.core.errors import DecodeError, TributaryError
from cdc.core.lsn import parse_lsn
from cdc.source.pgoutput import (
    PG_EPOCH_US_OFFSET,
    UNCHANGED_TOAST,
    Begin,
    BinaryDatum,
    Column,
    Commit,
    Delete,
    Insert,
    Keepalive,
    Message,
    Origin,
    Relation,
    Truncate,
    Type,
    UnchangedToast,
    Update,
    XLogData,
    decode_frame,
    decode_message,
    encode_standby_status,
    pg_us_to_unix_us,
)
from tests.pgoutput_encoder import encode_frame, encode_message, encode_tuple

REPO = Path(__file__).resolve().parents[2]
PG15_STREAM = REPO / "tests" / "fixtures" / "pg15_stream.jsonl"
TSDB_STREAM = REPO / "tests" / "fixtures" / "timescaledb-2.28.3" / "stream.jsonl"


def _load(path: Path) -> list[tuple[int, int, bytes]]:
    rows = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            rows.append((row["wal_start"], row["wal_end"], bytes.fromhex(row["payload"])))
    return rows


@pytest.fixture(scope="module")
def pg15_raw() -> list[tuple[int, int, bytes]]:
    return _load(PG15_STREAM)


@pytest.fixture(scope="module")
def pg15(pg15_raw) -> list:
    return [decode_message(payload) for _, _, payload in pg15_raw]


@pytest.fixture(scope="module")
def tsdb_raw() -> list[tuple[int, int, bytes]]:
    if not TSDB_STREAM.exists():
        pytest.skip(f"recorded TimescaleDB stream not present at {TSDB_STREAM}")
    return _load(TSDB_STREAM)


@pytest.fixture(scope="module")
def tsdb(tsdb_raw) -> list:
    return [decode_message(payload) for _, _, payload in tsdb_raw]


def _relations(msgs) -> dict[int, Relation]:
    """The latest Relation per OID (enough here: no OID changes shape within these streams, except
    items after ALTER TABLE, where the latest one is what the tests want)."""
    return {m.oid: m for m in msgs if isinstance(m, Relation)}


def _rel_oid(msgs, name: str) -> int:
    (oid,) = {m.oid for m in msgs if isinstance(m, Relation) and m.name == name}
    return oid


def _first(msgs, cls, **fields):
    for m in msgs:
        if isinstance(m, cls) and all(getattr(m, k) == v for k, v in fields.items()):
            return m
    raise AssertionError(f"no {cls.__name__} with {fields}")


def _rows(msgs, cls, relname: str) -> list:
    oid = _rel_oid(msgs, relname)
    return [m for m in msgs if isinstance(m, cls) and m.relation_oid == oid]


# ---------------------------------------------------------------------------------------------
# The PostgreSQL 15 recording (tests/fixtures/pg15_stream.jsonl, workload in its README)
# ---------------------------------------------------------------------------------------------


def test_pg15_message_counts(pg15):
    counts = Counter(type(m).__name__ for m in pg15)
    assert counts == {
        "Begin": 18,
        "Commit": 18,
        "Relation": 15,
        "Insert": 15,
        "Type": 6,
        "Update": 4,
        "Message": 4,
        "Truncate": 3,
        "Delete": 2,
        "Origin": 1,
    }


def test_pg15_transactions_are_well_formed(pg15_raw, pg15):
    """Every change sits between a Begin and its Commit; Begin.final_lsn is the Commit's LSN;
    Relation/Type frames (and a Begin followed by an Origin) carry wal_start 0."""
    open_begin = None
    xids = []
    for (wal_start, wal_end, _), m in zip(pg15_raw, pg15):
        assert wal_start == wal_end
        if isinstance(m, Begin):
            assert open_begin is None
            open_begin = m
            xids.append(m.xid)
        elif isinstance(m, Commit):
            assert open_begin is not None
            assert m.commit_lsn == open_begin.final_lsn
            assert m.commit_ts == open_begin.commit_ts
            assert m.flags == 0
            assert m.end_lsn > m.commit_lsn
            assert wal_start == m.end_lsn  # the walsender reports the end of the commit record
            open_begin = None
        elif isinstance(m, Message) and not m.transactional:
            assert open_begin is None
        else:
            assert open_begin is not None, m
        if isinstance(m, (Relation, Type)):
            assert wal_start == 0
    assert open_begin is None
    assert xids == sorted(xids)


def test_pg15_relations_and_columns(pg15):
    items = next(m for m in pg15 if isinstance(m, Relation) and m.name == "items")  # before ALTER TABLE
    assert (items.namespace, items.replica_identity) == ("public", "d")
    assert [c.name for c in items.columns] == ["id", "name", "mood", "qty", "tag", "price", "note"]
    assert [c.is_key for c in items.columns] == [True, False, False, False, False, False, False]
    assert [c.flags for c in items.columns] == [1, 0, 0, 0, 0, 0, 0]
    by_name = {c.name: c for c in items.columns}
    assert by_name["id"].type_oid == 23  # int4
    assert by_name["name"].type_oid == 25  # text
    assert by_name["price"].type_oid == 1700  # numeric
    assert by_name["price"].type_modifier == ((10 << 16) | 2) + 4  # numeric(10,2)
    assert by_name["note"].type_oid == 1043  # varchar
    assert by_name["note"].type_modifier == 20 + 4  # varchar(20)
    assert by_name["id"].type_modifier == -1

    ledger = _first(pg15, Relation, name="ledger")
    assert (ledger.namespace, ledger.replica_identity) == ("inv", "f")
    assert all(c.is_key for c in ledger.columns)  # REPLICA IDENTITY FULL: every column is "key"

    after_alter = [m for m in pg15 if isinstance(m, Relation) and m.name == "items"][-1]
    assert after_alter.oid == items.oid
    assert after_alter.columns[:7] == items.columns
    assert after_alter.columns[7] == Column(0, "extra", 23, -1)


def test_pg15_types(pg15):
    """'Y' precedes the Relation for columns of non-built-in types. For the domain PostgreSQL
    sends the domain's OID with the *base* type's name (int4 in pg_catalog, namespace '')."""
    items = _first(pg15, Relation, name="items")
    col = {c.name: c for c in items.columns}
    types = {m.oid: m for m in pg15 if isinstance(m, Type)}
    assert len(types) == 3  # sent twice: before the first items Relation and after ALTER TABLE
    assert types[col["mood"].type_oid] == Type(col["mood"].type_oid, "public", "mood")
    assert types[col["tag"].type_oid] == Type(col["tag"].type_oid, "public", "pair")
    assert types[col["qty"].type_oid] == Type(col["qty"].type_oid, "", "int4")
    first_rel = next(i for i, m in enumerate(pg15) if isinstance(m, Relation))
    assert [type(m) for m in pg15[first_rel - 3 : first_rel]] == [Type, Type, Type]


def test_pg15_inserts(pg15):
    inserts = _rows(pg15, Insert, "items")
    assert [m.new for m in inserts[:3]] == [
        (b"1", b"apple", b"happy", b"3", b"(1,x)", b"1.50", b"crisp"),
        (b"2", b"pear", None, None, None, None, None),
        (b"3", "quote's \"and\" ünïcödé".encode(), b"sad", b"7", b'(,"a,b")', b"0.00", b""),
    ]
    assert inserts[3].new == (b"20", b"from upstream", b"ok", b"1", None, b"2.00", None)
    assert inserts[4].new == (b"30", b"after alter", None, None, None, None, None, b"5")
    assert len(inserts) == 5  # the rolled-back insert of id 99 is not in the stream
    assert all(type(v) is bytes or v is None for m in inserts for v in m.new)


def test_pg15_updates(pg15):
    no_old, key_change = _rows(pg15, Update, "items")
    assert (no_old.old, no_old.old_kind) == (None, None)
    assert no_old.new == (b"1", b"apple", b"happy", b"4", b"(1,x)", b"1.50", b"crisp")
    # 'K': the old key, with every non-key column sent as NULL
    assert key_change.old_kind == "K"
    assert key_change.old == (b"2", None, None, None, None, None, None)
    assert key_change.new == (b"10", b"pear", None, None, None, None, None)

    (full,) = _rows(pg15, Update, "ledger")
    assert (full.old_kind, full.old, full.new) == ("O", (b"2", None), (b"2", b"second"))


def test_pg15_deletes(pg15):
    (by_key,) = _rows(pg15, Delete, "items")
    assert (by_key.old_kind, by_key.old) == ("K", (b"3", None, None, None, None, None, None))
    (by_row,) = _rows(pg15, Delete, "ledger")
    assert (by_row.old_kind, by_row.old) == ("O", (b"1", b"first"))


def test_pg15_unchanged_toast(pg15):
    (insert,) = _rows(pg15, Insert, "docs")
    assert insert.new[:2] == (b"1", b"1")
    assert len(insert.new[2]) == 2560 and insert.new[2].startswith(b"c4ca4238a0b923820dcc509a6f75849b")
    (update,) = _rows(pg15, Update, "docs")
    assert update.old is None
    assert update.new == (b"1", b"2", UNCHANGED_TOAST)
    assert update.new[2] is UNCHANGED_TOAST
    # the marker appears nowhere else
    assert sum(v is UNCHANGED_TOAST for m in pg15 if isinstance(m, (Insert, Update)) for v in m.new) == 1


def test_pg15_truncates(pg15):
    names = {m.oid: m.name for m in pg15 if isinstance(m, Relation)}
    truncates = [(tuple(names[o] for o in m.relation_oids), m.cascade, m.restart_identity)
                 for m in pg15 if isinstance(m, Truncate)]
    assert truncates == [
        (("parent", "child"), True, False),  # TRUNCATE parent CASCADE
        (("counter", "ledger"), False, True),  # TRUNCATE counter, inv.ledger RESTART IDENTITY
        (("parent", "counter", "child"), True, True),
    ]
    # each Truncate is preceded by the Relation of every relation it names
    for i, m in enumerate(pg15):
        if isinstance(m, Truncate):
            before = pg15[i - len(m.relation_oids) : i]
            assert sorted(r.oid for r in before) == sorted(m.relation_oids)


def test_pg15_logical_messages(pg15):
    msgs = [m for m in pg15 if isinstance(m, Message)]
    assert [(m.transactional, m.prefix, m.content) for m in msgs] == [
        (True, "tributary", b"transactional alone"),
        (False, "tributary", b"non-transactional"),
        (True, "tributary", b"\x00\xff\x10"),
        (False, "tributary", b"despite rollback"),
    ]
    i = pg15.index(msgs[0])
    assert isinstance(pg15[i - 1], Begin) and isinstance(pg15[i + 1], Commit)
    # a message's LSN is the END of its WAL record: alone in its transaction, that is where the
    # commit record starts
    assert msgs[0].lsn == pg15[i - 1].final_lsn
    assert [m.lsn for m in msgs] == sorted(m.lsn for m in msgs)


def test_pg15_message_lsn_is_the_frame_lsn(pg15_raw, pg15):
    for (wal_start, _, _), m in zip(pg15_raw, pg15):
        if isinstance(m, Message):
            assert m.lsn == wal_start


def test_pg15_origin(pg15_raw, pg15):
    i = next(i for i, m in enumerate(pg15) if isinstance(m, Origin))
    begin, origin, insert, commit = pg15[i - 1 : i + 3]
    assert isinstance(begin, Begin) and isinstance(insert, Insert) and isinstance(commit, Commit)
    assert origin == Origin(parse_lsn("0/ABCDEF"), "upstream_a")
    # the Begin is not the last write of its change, so the walsender sends it with LSN 0
    assert pg15_raw[i - 1][0] == 0
    # pg_replication_origin_xact_setup's timestamp becomes the commit timestamp
    expected = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert pg_us_to_unix_us(begin.commit_ts) == int(expected.timestamp()) * 1_000_000
    assert commit.commit_ts == begin.commit_ts


# ---------------------------------------------------------------------------------------------
# The TimescaleDB recording (counts from tests/fixtures/timescaledb-2.28.3/README.md)
# ---------------------------------------------------------------------------------------------


def test_tsdb_counts_match_readme(tsdb):
    names = {m.oid: m.name for m in tsdb if isinstance(m, Relation)}
    kinds = Counter(type(m).__name__ for m in tsdb)
    assert (kinds["Begin"], kinds["Commit"]) == (15, 15)
    assert kinds["Relation"] == 14 and kinds["Type"] == 6
    changes = Counter(
        (type(m).__name__[0], names[m.relation_oid]) for m in tsdb if isinstance(m, (Insert, Update, Delete))
    )
    assert changes == {
        ("I", "_hyper_7_15_chunk"): 2881,
        ("I", "_hyper_7_16_chunk"): 1440,
        ("I", "_hyper_7_17_chunk"): 1440,
        ("U", "_hyper_7_15_chunk"): 18,
        ("D", "_hyper_7_15_chunk"): 12,
        ("D", "_hyper_7_17_chunk"): 6,
        ("I", "compress_hyper_8_18_chunk"): 10,
        ("I", "compress_hyper_8_19_chunk"): 10,
        ("I", "site_config"): 3,
        ("U", "site_config"): 2,
        ("D", "site_config"): 1,
        ("I", "alarms"): 6,
    }
    markers = Counter((m.prefix, m.transactional, m.content) for m in tsdb if isinstance(m, Message))
    assert markers == {
        ("::timescaledb-compression-start", True, b""): 2,
        ("::timescaledb-compression-end", True, b""): 2,
        ("::timescaledb-decompression-start", True, b""): 3,
        ("::timescaledb-decompression-end", True, b""): 3,
    }
    (truncate,) = [m for m in tsdb if isinstance(m, Truncate)]
    assert [names[o] for o in truncate.relation_oids] == ["alarms"]
    assert (truncate.cascade, truncate.restart_identity) == (False, False)
    types = {(m.namespace, m.name) for m in tsdb if isinstance(m, Type)}
    assert types == {("_timescaledb_internal", "compressed_data")}


def test_tsdb_site_config(tsdb):
    inserts = _rows(tsdb, Insert, "site_config")
    assert inserts[1].new == (b"2", b"beta", None)
    assert inserts[2].new == (b"3", b"gamma", b"g")
    assert len(inserts[0].new[2]) == 400 * 32
    toast, key_change = _rows(tsdb, Update, "site_config")
    assert toast.new == (b"1", b"alpha2", UNCHANGED_TOAST) and toast.old is None
    assert key_change.old_kind == "K"
    assert key_change.old == (b"3", None, None)
    assert key_change.new == (b"30", b"gamma", b"g")
    (delete,) = _rows(tsdb, Delete, "site_config")
    assert (delete.old_kind, delete.old) == ("K", (b"2", None, None))
    site_config = _first(tsdb, Relation, name="site_config")
    assert [(c.name, c.is_key, c.type_oid) for c in site_config.columns] == [
        ("id", True, 23), ("name", False, 25), ("blob", False, 25)
    ]


def test_tsdb_consumer_that_drops_marked_ranges_keeps_the_data(tsdb):
    names = {m.oid: m.name for m in tsdb if isinstance(m, Relation)}
    inside = False
    kept = Counter()
    between = Counter()
    for m in tsdb:
        if isinstance(m, Message) and m.prefix.startswith("::timescaledb-"):
            inside = m.prefix.endswith("-start")
        elif isinstance(m, (Insert, Update, Delete)):
            name = names[m.relation_oid]
            if inside:
                between[type(m).__name__, name] += 1
            elif name.startswith("_hyper_7_"):
                kept[type(m).__name__] += 1
    assert between[("Insert", "_hyper_7_15_chunk")] == 1440
    assert kept == {"Insert": 4321, "Update": 18, "Delete": 18}


# ---------------------------------------------------------------------------------------------
# Round trips through the test encoder
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["pg15", "tsdb"])
def test_recorded_messages_round_trip(which, request):
    raw = request.getfixturevalue(f"{which}_raw")
    for _, _, payload in raw:
        msg = decode_message(payload)
        assert encode_message(msg) == payload, msg
        assert decode_message(memoryview(payload)) == msg
        assert decode_message(bytearray(payload)) == msg


def test_recorded_messages_through_frames(pg15_raw):
    for wal_start, wal_end, payload in pg15_raw:
        frame_bytes = encode_frame(XLogData(wal_start, wal_end, 123, payload))
        frame = decode_frame(frame_bytes)
        assert (frame.wal_start, frame.wal_end, frame.send_time) == (wal_start, wal_end, 123)
        assert isinstance(frame.payload, memoryview) and frame.payload.obj is frame_bytes
        assert decode_message(frame.payload) == decode_message(payload)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def _one_of_each_kind(raw) -> dict[int, bytes]:
    samples: dict[int, bytes] = {}
    for _, _, payload in raw:
        samples.setdefault(payload[0], payload)
    return samples


@pytest.fixture(scope="module")
def samples(pg15_raw) -> dict[str, bytes]:
    """Interesting recorded messages, by name."""
    msgs = [(p, decode_message(p)) for _, _, p in pg15_raw]
    pick = {}
    for kind, payload in _one_of_each_kind(pg15_raw).items():
        pick[chr(kind)] = payload
    pick["I-nulls"] = next(p for p, m in msgs if isinstance(m, Insert) and None in m.new)
    pick["R-items"] = next(p for p, m in msgs if isinstance(m, Relation) and m.name == "items")
    pick["U-K"] = next(p for p, m in msgs if isinstance(m, Update) and m.old_kind == "K")
    pick["U-O"] = next(p for p, m in msgs if isinstance(m, Update) and m.old_kind == "O")
    pick["U-u"] = next(p for p, m in msgs if isinstance(m, Update) and UNCHANGED_TOAST in m.new)
    pick["D-O"] = next(p for p, m in msgs if isinstance(m, Delete) and m.old_kind == "O")
    pick["T-3"] = next(p for p, m in msgs if isinstance(m, Truncate) and len(m.relation_oids) == 3)
    pick["M-binary"] = next(p for p, m in msgs if isinstance(m, Message) and m.content == b"\x00\xff\x10")
    return pick


def test_samples_cover_every_kind(samples):
    assert set("BCORYIUDTM") <= set(samples)


@pytest.mark.parametrize(
    "name", ["B", "C", "O", "R", "Y", "I", "U", "D", "T", "M", "I-nulls", "R-items", "U-K", "U-O", "U-u", "D-O",
             "T-3", "M-binary"]
)
def test_every_truncation_raises_decode_error(samples, name):
    payload = samples[name]
    assert decode_message(payload) is not None
    for cut in range(len(payload)):
        with pytest.raises(DecodeError) as info:
            decode_message(payload[:cut])
        text = str(info.value)
        assert "byte offset" in text
        if cut:
            assert repr(chr(payload[0])) in text, text
        assert info.value.__cause__ is None  # no struct.error / IndexError leaking as a cause


def test_truncated_insert_names_tag_and_offset(samples):
    payload = samples["I-nulls"]  # I, oid, N, ncols=7, 't' len '2' 't' len 'pear', 'n' x5
    with pytest.raises(DecodeError, match=r"Insert message 'I' \(0x49\): truncated .* at byte offset 8 of 9"):
        decode_message(payload[:9])
    with pytest.raises(DecodeError, match=r"truncated \(column 1: value of 4 bytes, 1 left\) at byte offset 14 of 20"):
        decode_message(payload[:20])
    with pytest.raises(DecodeError, match=r"truncated \(in column 6\) at byte offset 27 of 27"):
        decode_message(payload[:-1])
    with pytest.raises(DecodeError, match=r"truncated \(in the tuple's column count\) at byte offset 6 of 7"):
        decode_message(payload[:7])


def test_truncated_strings(samples):
    payload = samples["R-items"]
    with pytest.raises(DecodeError, match=r"Relation message 'R' \(0x52\): truncated \(string without its NUL "
                                          r"terminator\) at byte offset 5 of 8"):
        decode_message(payload[:8])


def test_unknown_message_tag():
    with pytest.raises(DecodeError, match=r"unknown pgoutput message tag 'Z' \(0x5a\) at byte offset 0"):
        decode_message(b"Z\x00\x00")
    # protocol version 2 streaming messages are not version 1
    with pytest.raises(DecodeError, match=r"tag 'S'"):
        decode_message(b"S\x00\x00\x00\x01\x01")
    with pytest.raises(DecodeError, match=r"tag 0xff"):
        decode_message(b"\xff")
    with pytest.raises(DecodeError, match=r"empty pgoutput message"):
        decode_message(b"")
    with pytest.raises(DecodeError):
        decode_message(memoryview(b""))


def test_unknown_tuple_kind(samples):
    payload = bytearray(samples["I-nulls"])
    assert payload[23] == ord("n")  # the third column's kind byte
    payload[23] = ord("x")
    with pytest.raises(DecodeError, match=r"Insert message 'I' \(0x49\): unknown tuple value kind 'x' \(0x78\) "
                                          r"in column 2 at byte offset 23 of 28"):
        decode_message(bytes(payload))


@pytest.mark.parametrize("name", ["B", "C", "O", "R", "Y", "I", "U-K", "U-O", "D-O", "T", "M"])
def test_trailing_garbage(samples, name):
    payload = samples[name]
    with pytest.raises(DecodeError, match=rf"'{payload[:1].decode()}' \(0x[0-9a-f]{{2}}\): 1 leftover bytes at "
                                          rf"byte offset {len(payload)} of {len(payload) + 1}"):
        decode_message(payload + b"\x00")
    with pytest.raises(DecodeError, match="3 leftover bytes"):
        decode_message(payload + b"xyz")


def test_bad_tuple_markers():
    oid = struct.pack(">I", 16384)
    tup = encode_tuple((b"1",))
    with pytest.raises(DecodeError, match=r"Insert .*expected 'N' before the new tuple, got 'K' .* offset 5"):
        decode_message(b"I" + oid + b"K" + tup)
    with pytest.raises(DecodeError, match=r"Update .*expected 'K', 'O' or 'N' .* got 'X' .* offset 5"):
        decode_message(b"U" + oid + b"X" + tup)
    with pytest.raises(DecodeError, match=r"Update .*expected 'N' before the new tuple, got 'K' .* offset 14"):
        decode_message(b"U" + oid + b"K" + tup + b"K" + tup)
    with pytest.raises(DecodeError, match=r"Update .*no new tuple after the old one.* offset 14"):
        decode_message(b"U" + oid + b"O" + tup)
    with pytest.raises(DecodeError, match=r"Delete .*expected 'K' or 'O' .* got 'N' .* offset 5"):
        decode_message(b"D" + oid + b"N" + tup)


def test_invalid_utf8_in_a_name():
    payload = b"Y" + struct.pack(">I", 1) + b"public\x00bad\xff\x00"
    with pytest.raises(DecodeError, match=r"Type message 'Y' \(0x59\): invalid UTF-8 .* at byte offset 15"):
        decode_message(payload)


def test_huge_counts_on_short_input_fail_fast():
    # 65535 columns announced, 1 present; 2**32-1 relations announced: no hang, no MemoryError
    with pytest.raises(DecodeError, match=r"truncated \(in column 1\)"):
        decode_message(b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">H", 0xFFFF) + b"n")
    with pytest.raises(DecodeError, match=r"truncated \(4294967295 relation OIDs"):
        decode_message(b"T" + struct.pack(">IB", 0xFFFFFFFF, 0) + b"\x00\x00\x00\x01")
    with pytest.raises(DecodeError, match=r"truncated \(content of 4294967295 bytes"):
        decode_message(b"M\x00" + b"\x00" * 8 + b"p\x00" + b"\xff\xff\xff\xff" + b"abc")
    with pytest.raises(DecodeError, match=r"truncated"):
        decode_message(b"R" + struct.pack(">I", 1) + b"s\x00t\x00d\xff\xff" + b"\x01a\x00" + b"\x00" * 8)


def test_decode_error_is_a_tributary_error():
    assert issubclass(DecodeError, TributaryError)


# ---------------------------------------------------------------------------------------------
# Hand-built messages and values
# ---------------------------------------------------------------------------------------------


def test_binary_datum_and_all_tuple_kinds():
    payload = b"I" + struct.pack(">I", 7) + b"N" + struct.pack(">H", 5)
    payload += b"t" + struct.pack(">I", 2) + b"hi"
    payload += b"n"
    payload += b"u"
    payload += b"b" + struct.pack(">I", 4) + b"\x00\x00\x00\x2a"
    payload += b"t" + struct.pack(">I", 0)
    assert decode_message(payload) == Insert(7, (b"hi", None, UNCHANGED_TOAST, BinaryDatum(b"\x00\x00\x00\x2a"), b""))


def test_unsigned_and_signed_fields():
    big = 0xFFFF_FFFF_FFFF_FFFF
    assert decode_message(b"B" + struct.pack(">QqI", big, -1, 0xFFFFFFFF)) == Begin(big, -1, 0xFFFFFFFF)
    assert decode_message(b"C" + struct.pack(">BQQq", 0, big, big, -5)) == Commit(0, big, big, -5)
    rel = decode_message(b"R" + struct.pack(">I", 0xFFFFFFFF) + b"\x00t\x00n" + struct.pack(">H", 1)
                         + b"\x03c\x00" + struct.pack(">Ii", 0xFFFFFFFF, -1))
    assert rel == Relation(0xFFFFFFFF, "", "t", "n", (Column(3, "c", 0xFFFFFFFF, -1),))
    assert rel.columns[0].is_key
    assert not Column(2, "c", 23, -1).is_key
    truncate = decode_message(b"T" + struct.pack(">IB", 0, 3))
    assert truncate == Truncate((), True, True)


def test_unchanged_toast_marker():
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST" == str(UNCHANGED_TOAST)
    assert isinstance(UNCHANGED_TOAST, UnchangedToast)
    assert UNCHANGED_TOAST is not None and UNCHANGED_TOAST != b"" and UNCHANGED_TOAST != b"u"
    assert pickle.loads(pickle.dumps(UNCHANGED_TOAST)) is UNCHANGED_TOAST
    assert copy.deepcopy(UNCHANGED_TOAST) is UNCHANGED_TOAST
    assert repr(Update(1, None, None, (b"x", UNCHANGED_TOAST))) == (
        "Update(relation_oid=1, old=None, old_kind=None, new=(b'x', UNCHANGED_TOAST))"
    )


def test_decoded_messages_are_frozen_slotted_dataclasses(pg15):
    for cls in (XLogData, Keepalive, Begin, Commit, Origin, Column, Relation, Type, BinaryDatum, Insert, Update,
                Delete, Truncate, Message):
        params = cls.__dataclass_params__
        assert params.frozen and hasattr(cls, "__slots__"), cls
    # the decoder builds Insert/Update/Delete without calling __init__: same objects all the same
    for m in pg15:
        if isinstance(m, (Insert, Update, Delete)):
            rebuilt = type(m)(**{f.name: getattr(m, f.name) for f in dataclasses.fields(m)})
            assert rebuilt == m and hash(rebuilt) == hash(m)
            assert not hasattr(m, "__dict__")
            with pytest.raises(dataclasses.FrozenInstanceError):
                m.relation_oid = 1  # type: ignore[misc]


def test_values_are_bytes_not_views():
    payload = memoryview(b"I" + struct.pack(">I", 1) + b"N" + encode_tuple((b"abc",)))
    (value,) = decode_message(payload).new
    assert type(value) is bytes


def test_pg_epoch():
    assert PG_EPOCH_US_OFFSET == int(datetime(2000, 1, 1, tzinfo=timezone.utc).timestamp()) * 1_000_000
    assert pg_us_to_unix_us(0) == 946_684_800_000_000
    assert pg_us_to_unix_us(-PG_EPOCH_US_OFFSET) == 0


# ---------------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------------


def test_decode_xlogdata_frame_is_zero_copy():
    buf = bytearray(b"w" + struct.pack(">QQq", 0x1_0000_0001, 0xFFFF_FFFF_FFFF_FFFF, -7) + b"Bpayload")
    frame = decode_frame(buf)
    assert (frame.wal_start, frame.wal_end, frame.send_time) == (0x1_0000_0001, 0xFFFF_FFFF_FFFF_FFFF, -7)
    assert isinstance(frame.payload, memoryview)
    assert bytes(frame.payload) == b"Bpayload"
    buf[25] = ord("X")  # the payload is a view of the frame, not a copy
    assert bytes(frame.payload) == b"Xpayload"
    # from a memoryview, and with an empty payload
    frame = decode_frame(memoryview(b"w" + b"\x00" * 24))
    assert frame == XLogData(0, 0, 0, frame.payload) and len(frame.payload) == 0


def test_decode_keepalive_frame():
    assert decode_frame(b"k" + struct.pack(">Qq?", 42, 1000, True)) == Keepalive(42, 1000, True)
    assert decode_frame(memoryview(b"k" + struct.pack(">Qq?", 42, -1, False))) == Keepalive(42, -1, False)
    assert encode_frame(Keepalive(42, -1, False)) == b"k" + struct.pack(">Qq?", 42, -1, False)


def test_bad_frames():
    with pytest.raises(DecodeError, match=r"empty replication frame"):
        decode_frame(b"")
    with pytest.raises(DecodeError, match=r"unknown replication frame tag 'r' \(0x72\) at byte offset 0"):
        decode_frame(encode_standby_status(1, 1, 1, 1))
    for cut in range(1, 25):
        with pytest.raises(DecodeError, match=r"'w' \(XLogData\) truncated"):
            decode_frame(b"w" + b"\x00" * (cut - 1))
    for cut in range(1, 18):
        with pytest.raises(DecodeError, match=r"'k' \(keepalive\) truncated"):
            decode_frame(b"k" + b"\x00" * (cut - 1))
    with pytest.raises(DecodeError, match=r"'k' \(keepalive\) has 1 leftover bytes: 19 bytes, expected 18"):
        decode_frame(b"k" + b"\x00" * 18)


def test_encode_standby_status():
    msg = encode_standby_status(0x10, 0x0F, 0x0E, 0x1234, reply=True)
    assert msg == b"r" + struct.pack(">QQQq", 0x10, 0x0F, 0x0E, 0x1234) + b"\x01"
    assert len(msg) == 34
    assert encode_standby_status(1, 2, 3, -4)[-1:] == b"\x00"
    assert encode_standby_status(2**64 - 1, 0, 0, 0)[1:9] == b"\xff" * 8
    with pytest.raises(ValueError, match="standby status out of range"):
        encode_standby_status(-1, 0, 0, 0)
    with pytest.raises(ValueError):
        encode_standby_status(2**64, 0, 0, 0)


# ---------------------------------------------------------------------------------------------
# Property: random messages round-trip through the encoder and the decoder
# ---------------------------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
names = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20)
values = st.one_of(
    st.binary(max_size=40),
    st.none(),
    st.just(UNCHANGED_TOAST),
    st.builds(BinaryDatum, st.binary(max_size=40)),
)
tuples = st.lists(values, max_size=12).map(tuple)
columns = st.builds(Column, st.integers(0, 255), names, u32, st.integers(-(2**31), 2**31 - 1))

inserts = st.builds(Insert, u32, tuples)
updates = st.one_of(
    st.builds(Update, u32, st.none(), st.none(), tuples),
    st.builds(Update, u32, tuples, st.sampled_from("KO"), tuples),
)
deletes = st.builds(Delete, u32, tuples, st.sampled_from("KO"))
relations = st.builds(Relation, u32, names, names, st.sampled_from("dnfi"), st.lists(columns, max_size=8).map(tuple))
others = st.one_of(
    st.builds(Begin, u64, i64, u32),
    st.builds(Commit, st.just(0), u64, u64, i64),
    st.builds(Origin, u64, names),
    st.builds(Type, u32, names, names),
    st.builds(Truncate, st.lists(u32, max_size=5).map(tuple), st.booleans(), st.booleans()),
    st.builds(Message, st.booleans(), u64, names, st.binary(max_size=40)),
)


@settings(database=None, max_examples=300)
@given(st.one_of(inserts, updates, deletes, relations))
def test_random_changes_and_relations_round_trip(msg):
    payload = encode_message(msg)
    assert decode_message(payload) == msg
    assert decode_message(memoryview(payload)) == msg
    assert encode_message(decode_message(payload)) == payload


@settings(database=None, max_examples=200)
@given(others)
def test_random_other_messages_round_trip(msg):
    payload = encode_message(msg)
    assert decode_message(payload) == msg
    assert encode_message(decode_message(payload)) == payload


@settings(database=None, max_examples=200)
@given(st.one_of(inserts, updates, deletes, relations, others), st.data())
def test_random_truncation_or_garbage_is_a_decode_error(msg, data):
    payload = encode_message(msg)
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(DecodeError):
        decode_message(payload[:cut])
    with pytest.raises(DecodeError, match="leftover"):
        decode_message(payload + data.draw(st.binary(min_size=1, max_size=5)))
