"""Duties due from one clock: the source's periodic chores."""

from __future__ import annotations

from cdc.runtime.duties import Every, Heartbeat


def test_a_duty_is_due_once_per_period_and_starts_over_when_done_out_of_turn() -> None:
    duty = Every(5.0, now=100.0)
    assert not duty.due(104.9)
    assert duty.due(105.0)
    assert not duty.due(109.0)  # counted as done at 105
    duty.done(109.5)  # the server asked for it
    assert duty.since(110.0) == 0.5
    assert not duty.due(114.0) and duty.due(114.5)


def test_a_heartbeat_is_due_only_on_an_idle_site_and_not_twice_in_a_period() -> None:
    beat = Heartbeat(10.0, now=0.0)
    assert not beat.due(9.0)
    beat.saw_transaction(8.0)  # the site committed: not idle
    assert not beat.due(15.0)
    assert beat.due(18.0)  # 10 s without a transaction
    assert not beat.due(25.0)  # sent at 18: not again before 28
    assert beat.due(28.0)
    assert not Heartbeat(0.0, now=0.0).due(1e9)  # 0: off
