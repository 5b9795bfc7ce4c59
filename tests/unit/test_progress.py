"""The confirm rule: only whole transactions whose every record Kafka acknowledged."""


from hypothesis import given, strategies as st

from cdc.source.progress import SourceProgress


def test_confirms_commit_end_lsn_only_after_all_records_acked() -> None:
    p = SourceProgress(100)
    p.on_produced(3)          # begin, change, commit of tx A
    p.on_commit(200)
    p.on_produced(3)          # tx B
    p.on_commit(300)
    p.on_acked(2)
    assert p.confirmed_lsn == 100  # A's Commit record not yet acknowledged
    p.on_acked(1)
    assert p.confirmed_lsn == 200
    p.on_acked(2)
    assert p.confirmed_lsn == 200  # B partly acknowledged: never past it
    p.on_acked(1)
    assert p.confirmed_lsn == 300


def test_idle_keepalive_position_confirmed_only_when_nothing_in_flight() -> None:
    p = SourceProgress(100)
    p.on_server_position(150, in_transaction=False)
    assert p.confirmed_lsn == 150
    p.on_produced(2)
    p.on_server_position(170, in_transaction=True)
    assert p.confirmed_lsn == 150
    p.on_commit(180)
    p.on_server_position(190, in_transaction=False)
    assert p.confirmed_lsn == 150  # records unacknowledged
    p.on_acked(2)
    assert p.confirmed_lsn == 180
    p.on_server_position(190, in_transaction=False)
    assert p.confirmed_lsn == 190


@given(st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=30),
       st.data())
def test_confirmed_is_always_a_fully_acked_commit(sizes: list[int], data: st.DataObject) -> None:
    """Exhaustively-ish: every ack split; the confirmed LSN is the last commit fully acked."""
    p = SourceProgress(0)
    ends = []
    for i, size in enumerate(sizes):
        p.on_produced(size)
        p.on_commit((i + 1) * 10)
        ends.append((p.produced, (i + 1) * 10))
    total = p.produced
    acked = 0
    while acked < total:
        step = data.draw(st.integers(min_value=1, max_value=total - acked))
        p.on_acked(step)
        acked += step
        expected = max([lsn for n, lsn in ends if n <= acked], default=0)
        assert p.confirmed_lsn == expected
