"""Source progress: which LSN may be confirmed to the slot.

Rule (docs/design.md, "Progress is a commit, never a change"): confirm a transaction by its Commit
message's end LSN, and only once Kafka has acknowledged every record of it and of every earlier
transaction. Records are numbered in the order they are produced; Kafka acknowledges the records
of one partition in that order (idempotent producer), so the acknowledged prefix is a count.
Any delivery error makes the whole stream restart from the confirmed point, so a gap is never
skipped over.

When no transaction is open and every record is acknowledged, the server's position from a
keepalive may be confirmed too: every transaction that committed before it has been received
and acknowledged. That keeps an idle slot from holding WAL.

Pure; every position only moves forward.
"""

from __future__ import annotations

from collections import deque


class SourceProgress:
    """Received, acknowledged and confirmable positions of one replication stream."""

    def __init__(self, start_lsn: int) -> None:
        self.confirmed_lsn = start_lsn  # what we may report as flushed
        self.received_lsn = start_lsn  # highest WAL position seen on the stream
        self.produced = 0  # records handed to the producer
        self.acked = 0  # records acknowledged, an unbroken prefix
        self._commits: deque[tuple[int, int]] = deque()  # (records produced incl. Commit, end LSN)

    def on_produced(self, count: int = 1) -> None:
        self.produced += count

    def on_commit(self, end_lsn: int) -> None:
        """The Commit record of a transaction ending at ``end_lsn`` was just produced."""
        self._commits.append((self.produced, end_lsn))
        if end_lsn > self.received_lsn:
            self.received_lsn = end_lsn

    def on_acked(self, count: int = 1) -> None:
        self.acked += count
        if self.acked > self.produced:
            raise AssertionError(f"acknowledged {self.acked} records but produced {self.produced}")
        commits = self._commits
        while commits and commits[0][0] <= self.acked:
            _, end_lsn = commits.popleft()
            if end_lsn > self.confirmed_lsn:
                self.confirmed_lsn = end_lsn

    def on_server_position(self, wal_end: int, in_transaction: bool) -> None:
        """A keepalive told the server's position; confirm it if nothing is in flight."""
        if wal_end > self.received_lsn:
            self.received_lsn = wal_end
        if not in_transaction and not self._commits and self.acked == self.produced:
            if wal_end > self.confirmed_lsn:
                self.confirmed_lsn = wal_end

    @property
    def unacked(self) -> int:
        return self.produced - self.acked
