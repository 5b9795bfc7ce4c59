"""The apply worker is the cloud connection's one owner: whatever the main thread needs done on
it runs on the worker's thread, in order after the batches handed over before it."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from sinks.worker import ApplyWorker


class Recorder:
    """Stands in for the connection and the applier: notes which thread touched them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def note(self, what: str) -> None:
        self.events.append((what, threading.current_thread().name))


def test_calls_run_on_the_worker_thread_after_the_batches_before_them() -> None:
    conn = Recorder()
    gate = threading.Event()

    def apply_batch(batch: list[Any], c: Recorder, applier: Any) -> None:
        gate.wait(5)  # the main thread hands over the call while this batch is in hand
        c.note(f"batch {batch[0]}")

    worker = ApplyWorker(conn, None, apply_batch)  # type: ignore[arg-type]
    worker.start()
    try:
        worker.submit([1])
        threading.Timer(0.2, gate.set).start()
        assert worker.call(lambda c, a: (c.note("call"), 42)[1]) == 42
        assert conn.events == [("batch 1", "tributary-apply"), ("call", "tributary-apply")]
    finally:
        worker.close()


def test_a_calls_error_is_raised_in_the_caller_and_the_worker_goes_on() -> None:
    conn = Recorder()
    worker = ApplyWorker(conn, None, lambda b, c, a: c.note("batch"))  # type: ignore[arg-type]
    worker.start()
    try:
        with pytest.raises(ZeroDivisionError):
            worker.call(lambda c, a: 1 / 0)
        worker.submit([1])
        worker.drain()
        assert conn.events == [("batch", "tributary-apply")]
    finally:
        worker.close()


def test_once_the_worker_has_ended_the_caller_runs_the_call_itself() -> None:
    conn = Recorder()
    worker = ApplyWorker(conn, None, lambda b, c, a: None)  # type: ignore[arg-type]
    worker.start()
    worker.close()
    worker.call(lambda c, a: c.note("call"))  # the session is closing: nobody else is left
    assert conn.events == [("call", threading.current_thread().name)]


def test_a_worker_never_started_closes_quietly() -> None:
    """A session that fails before it streams (Kafka away when the dead-letter topic is made)
    closes what it built; closing an unstarted worker must not raise over that failure."""
    ApplyWorker(Recorder(), None, lambda b, c, a: None).close()  # type: ignore[arg-type]
