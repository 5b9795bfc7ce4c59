"""The daemons' backoff: doubling over quick failures, starting over after a healthy session."""

from __future__ import annotations

import threading

from cdc.core.errors import ConnectionLost
from cdc.runtime.retry import Backoff, run_with_backoff


def test_quick_failures_double_the_wait_up_to_30_s() -> None:
    b = Backoff(healthy_s=60)
    assert [b.wait(n, ran_s=1) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_a_session_that_ran_healthy_starts_the_backoff_over() -> None:
    b = Backoff(healthy_s=60)
    for n in range(1, 8):
        b.wait(n, ran_s=1)
    assert b.wait(8, ran_s=600) == 0.5  # a day of faults behind it: back in half a second
    assert b.wait(9, ran_s=1) == 1.0


def test_transient_failures_are_retried_until_the_session_returns() -> None:
    calls: list[int] = []
    stop = threading.Event()

    def session() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionLost("the cloud is away")
        stop.set()

    run_with_backoff(session, stop, "test session")
    assert len(calls) == 3
