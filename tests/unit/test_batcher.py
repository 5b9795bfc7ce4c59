"""Pure sink logic: set-based steps leave what one-by-one application leaves; whole transactions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from cdc.core.errors import ApplyError
from sinks.batcher import Delete, Patch, SiteStream, Truncate, Upsert, plan
from sinks.changes import Change, ColumnDef, TableVersion

T1 = TableVersion(1, "public", "t1", (ColumnDef("id", "id", "integer", True),
                                      ColumnDef("v", "v", "text", False),
                                      ColumnDef("big", "big", "text", False)))
T2 = TableVersion(2, "public", "t2", (ColumnDef("id", "id", "integer", True),
                                      ColumnDef("v", "v", "text", False)))


def row(version: TableVersion, key: int, v: str | None, big: str | None = "B") -> dict[str, Any]:
    out = {"id": key, "v": v}
    if version is T1:
        out["big"] = big
    return out


# -- a reference: apply changes one at a time to dict tables -----------------------------------
def apply_one_by_one(db: dict, changes: list[Change]) -> None:
    for ch in changes:
        table = db.setdefault(ch.version.table, {})
        if ch.op == "t":
            table.clear()
        elif ch.op == "d":
            table.pop(ch.before["id"], None)
        else:
            old = ch.before["id"] if ch.before else ch.after["id"]
            prev = table.pop(old, None) if ch.op == "u" else table.get(ch.after["id"])
            new = dict(ch.after)
            for f in ch.unchanged:
                new[f] = prev[f] if prev else None
            table[ch.after["id"]] = new


def apply_steps(db: dict, steps: list) -> None:
    for step in steps:
        table = db.setdefault(step.version.table, {})
        if isinstance(step, Upsert):
            for r in step.rows.values():
                table[r["id"]] = dict(r)
        elif isinstance(step, Delete):
            for k in step.keys.values():
                table.pop(k["id"], None)
        elif isinstance(step, Patch):
            old = table.pop(step.old_key["id"], None)
            if old is not None:
                for f in step.fields:
                    old[f] = step.row[f]
                table[old["id"]] = old
        elif isinstance(step, Truncate):
            table.clear()


@st.composite
def workloads(draw: st.DrawFn) -> list[Change]:
    """Random valid change sequences over two tables, tracking which keys exist."""
    exists: dict[str, set[int]] = {"t1": set(), "t2": set()}
    changes = []
    for _ in range(draw(st.integers(0, 40))):
        version = draw(st.sampled_from([T1, T2]))
        keys = exists[version.table]
        op = draw(st.sampled_from(["c", "u", "uk", "ut", "d", "t"]))
        if op == "c":
            k = draw(st.integers(0, 6).filter(lambda x: x not in keys))  # noqa: B023
            keys.add(k)
            changes.append(Change(version, "c", None, row(version, k, draw(st.text(max_size=2))), []))
        elif op == "t":
            keys.clear()
            changes.append(Change(version, "t", None, None, []))
        elif keys:
            k = draw(st.sampled_from(sorted(keys)))
            if op == "d":
                keys.discard(k)
                changes.append(Change(version, "d", {"id": k, "v": None, **({"big": None} if version is T1 else {})}, None, []))
            elif op == "u":
                changes.append(Change(version, "u", None, row(version, k, draw(st.text(max_size=2))), []))
            elif op == "ut" and version is T1:
                changes.append(Change(version, "u", None, row(version, k, "toast", None), ["big"]))
            elif op == "uk":
                free = [x for x in range(7) if x not in keys]
                if free:
                    n = draw(st.sampled_from(free))
                    keys.discard(k)
                    keys.add(n)
                    toast = version is T1 and draw(st.booleans())
                    after = row(version, n, "moved", None if toast else "B2")
                    before = {"id": k, "v": None, **({"big": None} if version is T1 else {})}
                    changes.append(Change(version, "u", before, after, ["big"] if toast else []))
    return changes


@settings(max_examples=300, deadline=None)
@given(workloads(), workloads())
def test_steps_leave_what_one_by_one_leaves(first: list[Change], second: list[Change]) -> None:
    seed: dict = {}
    apply_one_by_one(seed, first)  # some existing cloud state
    expected = {t: {k: dict(v) for k, v in rows.items()} for t, rows in seed.items()}
    got = {t: {k: dict(v) for k, v in rows.items()} for t, rows in seed.items()}
    apply_one_by_one(expected, second)
    apply_steps(got, plan(second))
    assert {t: r for t, r in got.items() if r} == {t: r for t, r in expected.items() if r}


def test_inserts_of_one_table_become_one_step() -> None:
    changes = [Change(T1, "c", None, row(T1, i, "x"), []) for i in range(1000)]
    steps = plan(changes)
    assert len(steps) == 1 and isinstance(steps[0], Upsert) and len(steps[0].rows) == 1000


def test_toast_update_after_insert_merges_into_the_full_row() -> None:
    steps = plan([Change(T1, "c", None, row(T1, 1, "a", "BIG"), []),
                  Change(T1, "u", None, row(T1, 1, "b", None), ["big"])])
    assert len(steps) == 1 and steps[0].rows[(1,)] == {"id": 1, "v": "b", "big": "BIG"}


# -- SiteStream -----------------------------------------------------------------------------
def begin(lsn: int, xid: int = 1, system: str = "sys") -> dict:
    return {"system_id": system, "timeline": 1, "slot": "s", "xid": xid, "commit_lsn": lsn,
            "commit_ts": 0}


def commit(lsn: int, changes: int, xid: int = 1) -> dict:
    return {"xid": xid, "commit_lsn": lsn, "end_lsn": lsn + 8, "changes": changes}


def ins(k: int) -> Change:
    return Change(T2, "c", None, row(T2, k, "x"), [])


def test_site_stream_skips_applied_and_restarts_cut_transactions() -> None:
    s = SiteStream("a", None)
    s.begin(begin(100), 0)
    s.change(ins(1), 1)
    s.commit(commit(100, 1), 2)
    changes, tx, offset = s.take_done()
    assert len(changes) == 1 and tx.commit_lsn == 100 and offset == 3
    s.committed(tx)
    # the source restarts: tx 100 again (skipped), then tx 200 cut short and sent again
    assert not s.begin(begin(100), 3)
    assert not s.change(ins(1), 4)
    s.commit(commit(100, 1), 5)
    s.begin(begin(200, 2), 6)
    s.change(ins(2), 7)
    assert s.begin(begin(200, 2), 8)  # cut short
    s.change(ins(2), 9)
    s.change(ins(3), 10)
    s.commit(commit(200, 2, 2), 11)
    changes, tx, _ = s.take_done()
    assert [c.after["id"] for c in changes] == [2, 3] and tx.commit_lsn == 200
    assert s.skipped == 1


def test_new_identity_is_not_skipped() -> None:
    s = SiteStream("a", None)
    s.begin(begin(500), 0)
    s.commit(commit(500, 0), 1)
    s.committed(s.take_done()[1])
    s.begin(begin(100, system="other"), 2)  # a re-created site: LSNs start over
    assert s.change(ins(1), 3)


def test_handed_out_transactions_are_skipped_before_their_commit_is_seen() -> None:
    """A redelivered transaction arriving while its first copy is being applied is skipped."""
    s = SiteStream("a", None)
    s.begin(begin(100), 0)
    s.change(ins(1), 1)
    s.commit(commit(100, 1), 2)
    _, tx, _ = s.take_done()
    s.begin(begin(200, 2), 3)
    s.commit(commit(200, 0, 2), 4)
    assert not s.begin(begin(100), 5) and not s.change(ins(1), 6)  # redelivered: skipped
    s.committed(tx)
    assert s.last_tx.commit_lsn == 200 and s.applied.commit_lsn == 100


def test_missing_change_records_stop_the_site() -> None:
    s = SiteStream("a", None)
    s.begin(begin(100), 0)
    s.change(ins(1), 1)
    with pytest.raises(ApplyError, match="records are missing"):
        s.commit(commit(100, 2), 2)


def test_change_without_begin_is_an_error() -> None:
    with pytest.raises(ApplyError, match="outside a transaction"):
        SiteStream("a", None).change(ins(1), 7)


def test_initial_copy_chunks_share_an_lsn_and_are_skipped_only_behind_the_stream() -> None:
    """Chunks of a slot's initial copy (xid 0) all carry the LSN below its consistent point."""
    s = SiteStream("a", None)
    for offset, k in ((0, 1), (3, 2)):
        assert not s.begin(begin(99, xid=0), offset)
        assert s.change(ins(k), offset + 1)  # the second chunk is applied too
        s.commit(commit(99, 1, xid=0), offset + 2)
    s.begin(begin(99, xid=5), 6)  # a real transaction is never at a chunk's LSN: skipped
    assert not s.change(ins(9), 7)
    s.commit(commit(99, 1, xid=5), 8)
    s.begin(begin(100), 9)  # the stream, from the consistent point
    assert s.change(ins(3), 10)
    s.commit(commit(100, 1), 11)
    changes, tx, _ = s.take_done()
    assert [c.after["id"] for c in changes] == [1, 2, 3] and tx.commit_lsn == 100
    s.committed(tx)
    s.begin(begin(99, xid=0), 12)  # a chunk read again on a replay: behind the stream, skipped
    assert not s.change(ins(1), 13)


# -- the link between transactions (DESIGN: "Gaps that look like restarts") -----------------------
def linked(lsn: int, prev: int, first: bool = False, xid: int = 1) -> dict:
    return {**begin(lsn, xid), "prev_end_lsn": prev, "session_first": first}


def whole(s: SiteStream, rec: dict, changes: list[Change], offset: int) -> int:
    s.begin(rec, offset)
    for ch in changes:
        offset += 1
        s.change(ch, offset)
    s.commit(commit(rec["commit_lsn"], len(changes), rec["xid"]), offset + 1)
    return offset + 2


def applied_keys(s: SiteStream) -> list[int]:
    changes, tx, _ = s.take_done()
    s.committed(tx)
    return [c.after["id"] for c in changes]


def test_a_delivery_gap_holds_later_transactions_until_the_source_sends_again() -> None:
    """Topic: Z, A.begin, A.c1 (A's tail timed out), B whole, then the source's next session:
    A and B again. B must not be applied before A, and A must not be skipped as older."""
    s = SiteStream("a", None)
    o = whole(s, linked(100, 50, first=True), [ins(1)], 0)  # Z, ends at 108
    s.begin(linked(200, 108, xid=2), o)  # A
    s.change(ins(2), o + 1)
    o = whole(s, linked(300, 208, xid=3), [ins(3)], o + 2)  # B cuts A short; links to A
    assert s.held == 1
    assert applied_keys(s) == [1]  # B held
    o = whole(s, linked(200, 108, first=True, xid=2), [ins(2), ins(22)], o)  # A again
    o = whole(s, linked(300, 208, xid=3), [ins(3)], o)  # B again
    assert applied_keys(s) == [2, 22, 3] and s.held == 0


def test_a_new_session_from_the_slots_confirmed_point_is_redelivery() -> None:
    s = SiteStream("a", None)
    o = whole(s, linked(100, 50, first=True), [ins(1)], 0)
    o = whole(s, linked(200, 108, xid=2), [ins(2)], o)
    assert applied_keys(s) == [1, 2]
    # the slot had confirmed only 108: 200 comes again (skipped), then 300 follows it
    o = whole(s, linked(200, 108, first=True, xid=2), [ins(2)], o)
    o = whole(s, linked(300, 208, xid=3), [ins(3)], o)
    assert applied_keys(s) == [3] and s.skipped == 1
    # an idle site's slot confirmed past the last transaction: the next session starts above
    whole(s, linked(900, 850, first=True, xid=4), [ins(4)], o)
    assert applied_keys(s) == [4]


def test_a_session_starting_below_what_the_cloud_holds_with_new_transactions_stops_the_site(
) -> None:
    """The slot was created again, or the site restored: LSNs went backwards for one identity."""
    from cdc.core.errors import ProgressError
    s = SiteStream("a", None)
    whole(s, linked(500, 50, first=True), [ins(1)], 0)
    assert applied_keys(s) == [1]
    with pytest.raises(ProgressError, match="LSNs went backwards"):
        s.begin(linked(600, 300, first=True, xid=9), 10)


def test_a_slot_created_again_above_what_the_cloud_holds_stops_the_site() -> None:
    """snapshot = "never": the new slot starts at the site's current WAL; what happened between
    the old slot's last transaction and the new slot's start never reaches the cloud."""
    from cdc.core.errors import ProgressError
    s = SiteStream("a", None)
    whole(s, linked(500, 50, first=True), [ins(1)], 0)
    assert applied_keys(s) == [1]
    with pytest.raises(ProgressError, match="created again"):
        s.begin({**linked(900, 850, first=True, xid=9), "slot_created": True}, 10)


def test_a_replay_skips_transactions_of_the_sites_earlier_identity() -> None:
    """The slot (or timeline) changed: a replay from the topic's start reads the old identity's
    transactions again, whose LSNs say nothing next to the new one's; they are skipped."""
    from cdc.core.errors import ProgressError
    s = SiteStream("a", None)
    o = whole(s, begin(900), [ins(1)], 0)  # identity "sys" up to 900
    o = whole(s, begin(100, system="new"), [ins(2)], o)  # a new identity, lower LSNs
    assert applied_keys(s) == [1, 2]
    replay = SiteStream("a", s.applied, earlier=s.earlier)  # what the cloud stored
    o = whole(replay, begin(900), [ins(1)], o)
    o = whole(replay, begin(100, system="new"), [ins(2)], o)
    assert applied_keys(replay) == [] and replay.skipped == 2
    with pytest.raises(ProgressError, match="two sources"):  # the old identity writes again
        replay.begin(begin(1000), o)


def test_a_dead_transaction_keeps_nothing_and_waits_behind_the_done_ones() -> None:
    """A transaction marked dead drops its changes, leaves the resume offset at the last done
    one (the sink applies those first) and becomes ``dead`` with its whole offset range."""
    s = SiteStream("a", None)
    s.begin(begin(100), 0)
    s.change(ins(1), 1)
    s.commit(commit(100, 1), 2)
    s.begin(begin(200, 2), 3)
    s.change(ins(2), 4)
    s.kill_open("refused")
    s.change(ins(3), 5)
    s.commit(commit(200, 2, 2), 6)
    assert s.dead is not None
    assert (s.dead.first_offset, s.dead.last_offset, s.dead.tx.commit_lsn, s.dead.reason) == \
        (3, 6, 200, "refused")
    assert s.dead.tables == (T2.qualified,)
    changes, tx, offset = s.take_done()
    assert [c.after["id"] for c in changes] == [1] and tx.commit_lsn == 100 and offset == 3
    s.committed(tx)
    s.buried(s.dead)
    assert s.dead is None and s.applied.commit_lsn == 200 and s.cloud_offset == 7
    s.begin(begin(200, 2), 7)  # sent again by a restarted source: already handled
    assert not s.change(ins(2), 8)


def test_an_unreadable_change_of_a_skipped_transaction_needs_nothing() -> None:
    s = SiteStream("a", None)
    s.begin(begin(100), 0)
    s.commit(commit(100, 0), 1)
    s.committed(s.take_done()[1])
    s.begin(begin(100), 2)  # again: skipped
    s.unreadable_change("cut")
    s.commit(commit(100, 1), 4)  # counted: no "records are missing"
    assert s.dead is None
    s.begin(begin(300, 3), 5)
    s.unreadable_change("cut")
    s.commit(commit(300, 1, 3), 6)
    assert s.dead is not None and s.dead.first_offset == 5 and s.dead.reason == "cut"


def test_a_chunk_truncate_plans_a_range_and_a_table_truncate_none() -> None:
    """The range a chunk's truncate event carries (its one set field) reaches the step."""
    from sinks.batcher import chunk_range

    bounded = Change(T2, "t", {"id": "10", "v": None}, {"id": "20", "v": None}, [])
    assert plan([bounded])[0].range == ("id", "10", "20")
    assert plan([Change(T2, "t", None, {"id": "20", "v": None}, [])])[0].range == \
        ("id", None, "20")
    assert plan([Change(T2, "t", None, None, [])])[0].range is None
    with pytest.raises(ApplyError, match="several columns"):
        chunk_range(Change(T2, "t", {"id": "1", "v": "x"}, None, []))
