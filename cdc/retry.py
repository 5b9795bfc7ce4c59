"""Backoff for the daemons' sessions: a transient failure (a server away, a lost connection)
starts a new session after an exponential wait (0.5 s doubling to 30 s), logged; anything else
ends the daemon. A stop request interrupts the wait."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_never, wait_exponential

log = logging.getLogger("cdc.retry")


def run_with_backoff(session: Callable[[], None], stop: threading.Event, what: str,
                     transient: tuple[type[BaseException], ...]) -> None:
    """Run ``session`` until it returns with ``stop`` set, retrying transient failures."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        log.warning(f"{what} interrupted; retrying in {wait:.1f} s: {exc}",
                    extra={"attempt": state.attempt_number, "error_type": type(exc).__name__})

    retrying = Retrying(retry=retry_if_exception_type(transient),
                        wait=wait_exponential(multiplier=0.5, max=30), stop=stop_never,
                        before_sleep=before_sleep, reraise=True, sleep=stop.wait)
    for attempt in retrying:
        with attempt:
            if not stop.is_set():
                session()
