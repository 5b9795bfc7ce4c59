"""Backoff for the daemons' sessions: a transient failure (:func:`cdc.core.errors.classify`)
starts a new session after an exponential wait (0.5 s doubling to 30 s), logged; anything else
ends the daemon. A stop request interrupts the wait. A session that ran for ``HEALTHY_S`` before
it failed starts the backoff over: a daemon that has met many faults over a day still comes back
from the next one in half a second, not after the 30 s its count of failures would give."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_never

from cdc.core.errors import Family, classify

log = logging.getLogger("cdc.retry")  # the name logs have always shown

FIRST_WAIT_S = 0.5
MAX_WAIT_S = 30.0
HEALTHY_S = 60.0


class Backoff:
    """The wait before the next session: doubling over the failures since the last session that
    ran for ``healthy_s`` (pure: fed the attempt number and how long the session ran)."""

    def __init__(self, healthy_s: float = HEALTHY_S) -> None:
        self.healthy_s = healthy_s
        self._first = 1  # the attempt that opened the current run of quick failures

    def wait(self, attempt: int, ran_s: float) -> float:
        if ran_s >= self.healthy_s:
            self._first = attempt
        return min(MAX_WAIT_S, FIRST_WAIT_S * 2 ** (attempt - self._first))


def transient(exc: BaseException) -> bool:
    return classify(exc) is Family.TRANSIENT


def run_with_backoff(session: Callable[[], None], stop: threading.Event, what: str) -> None:
    """Run ``session`` until it returns with ``stop`` set, retrying transient failures."""
    backoff = Backoff()
    started = [time.monotonic()]

    def wait(state: RetryCallState) -> float:
        return backoff.wait(state.attempt_number, time.monotonic() - started[0])

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait_s = state.next_action.sleep if state.next_action else 0
        log.warning(f"{what} interrupted; retrying in {wait_s:.1f} s: {exc}",
                    extra={"attempt": state.attempt_number, "error_type": type(exc).__name__})

    retrying = Retrying(retry=retry_if_exception(transient), wait=wait, stop=stop_never,
                        before_sleep=before_sleep, reraise=True, sleep=stop.wait)
    for attempt in retrying:
        with attempt:
            if not stop.is_set():
                started[0] = time.monotonic()
                session()
