"""The apply worker: the only thread that touches the cloud connection.

The sink's main thread reads Kafka and plans; the worker applies batches on the cloud
connection meanwhile. Everything else the main thread needs done on that connection (load the
progress at an assignment, roll back what a stopped site left open, record a dead letter) it
hands over with :meth:`ApplyWorker.call`, which runs on the worker, after every batch handed
over before it, and returns the result there. So the connection and the applier's caches have
one owner by construction, not by a rule the code must remember.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import psycopg

from cdc.core.ledger import FROM_BEGINNING, AppliedTx
from sinks.applier import Applier
from sinks.batcher import SiteStream, Step

T = TypeVar("T")


@dataclass
class Part:
    """One partition's share of a cloud transaction."""

    topic: str
    partition: int
    stream: SiteStream
    steps: list[Step]
    changes: int
    tx: AppliedTx | None
    next_offset: int | None
    final: bool = True  # False: a part of a large transaction, the cloud transaction stays open
    expected: int = FROM_BEGINNING  # the offset the cloud must still hold here (the fence)
    earlier: dict = field(default_factory=dict)  # the site's earlier identities, when taken
    ops: dict[str, int] = field(default_factory=dict)  # changes by op, for the metrics
    commit_ts: list[int] = field(default_factory=list)  # site commit times (us) of its txs
    committed_at: float = 0.0  # cloud commit time (Unix s), set by the worker
    replaying: bool = False  # the site had a replay to finish when the part was taken
    first_offset: int | None = None  # the Begin of its first transaction
    txs: int = 0  # complete transactions in it
    tables: tuple[str, ...] = ()  # the site tables they change


class SiteFailed(Exception):
    """One site's part of a batch cannot be applied; the batch was rolled back."""

    def __init__(self, part: Part, cause: Exception) -> None:
        super().__init__(str(cause))
        self.part, self.cause = part, cause
        self.batch: list[Part] = []


class _Call:
    """A function to run on the worker, with its result or error for the caller."""

    def __init__(self, fn: Callable[[psycopg.Connection, Applier], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


ApplyBatch = Callable[[list[Part], psycopg.Connection, Applier], None]


class ApplyWorker(threading.Thread):
    """Applies batches on the cloud connection while the main thread reads the next one.

    At most one batch waits (bounded memory). A failure is kept and raised in the main thread.
    When one site's part fails, the batches after it are held, not applied, so the main thread
    can submit them again without that site and every other site stays in commit order.
    """

    def __init__(self, conn: psycopg.Connection, applier: Applier,
                 apply_batch: ApplyBatch) -> None:
        super().__init__(name="tributary-apply", daemon=True)
        self._conn = conn
        self._applier = applier
        self._apply = apply_batch
        self._jobs: queue.Queue[list[Part] | _Call | None] = queue.Queue(maxsize=1)
        self.finished: queue.SimpleQueue[list[Part]] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.failed: SiteFailed | None = None
        self.held: list[list[Part]] = []

    def run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if isinstance(job, _Call):
                    self._run_call(job)
                    continue
                if self.error is not None:
                    continue
                if self.failed is not None:
                    self.held.append(job)
                    continue
                self._apply(job, self._conn, self._applier)
                self.finished.put(job)
            except SiteFailed as failed:
                failed.batch = job  # type: ignore[assignment]
                self.failed = failed
            except BaseException as exc:  # handed to the main thread by check()
                self.error = exc
            finally:
                self._jobs.task_done()

    def _run_call(self, call: _Call) -> None:
        try:
            call.result = call.fn(self._conn, self._applier)
        except BaseException as exc:  # raised in the caller
            call.error = exc
        finally:
            call.done.set()

    def call(self, fn: Callable[[psycopg.Connection, Applier], T]) -> T:
        """Run ``fn(conn, applier)`` on the worker after what was handed over before, and
        return its result (or raise its error) here. Once the worker has ended (the session is
        closing), the caller is the only one left and runs it itself."""
        if not self.is_alive():
            return fn(self._conn, self._applier)
        self.check()
        job = _Call(fn)
        self._jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[no-any-return]

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def idle(self) -> bool:
        """No batch in hand or waiting."""
        return self._jobs.unfinished_tasks == 0

    def submit(self, job: list[Part]) -> None:
        self.check()
        self._jobs.put(job)

    def drain(self) -> None:
        """Wait until every submitted batch is committed (or failed)."""
        self._jobs.join()
        self.check()

    def close(self) -> None:
        if self.ident is None:
            return  # never started (the session failed before it streamed)
        try:
            self._jobs.put(None, timeout=30)
        except queue.Full:
            return  # stuck on the connection: it is a daemon thread, the process is ending
        self.join(30)


def forget_uncommitted(conn: psycopg.Connection, applier: Applier) -> None:
    """Roll the cloud transaction back; the applier forgets what it prepared in it."""
    try:
        conn.rollback()
    except psycopg.Error:
        pass
    applier.forget()
