"""Periodic duties of a daemon's loop, due from one monotonic clock.

A streaming loop has chores besides its work: answer the server, refresh metrics, look for
new tables, log progress. Each is an :class:`Every` with its period; the loop asks each whether
it is due at ``now``. Pure: the caller passes the clock's readings.
"""

from __future__ import annotations


class Every:
    """A duty due once ``period_s`` seconds have passed since it was last done."""

    __slots__ = ("period_s", "last")

    def __init__(self, period_s: float, now: float) -> None:
        self.period_s = period_s
        self.last = now

    def due(self, now: float) -> bool:
        """Whether the duty is due; if so it counts as done at ``now``."""
        if now - self.last >= self.period_s:
            self.last = now
            return True
        return False

    def since(self, now: float) -> float:
        """Seconds since the duty was last done."""
        return now - self.last

    def done(self, now: float) -> None:
        """Done out of turn (the server asked for it): the period starts again."""
        self.last = now


class Heartbeat:
    """An idle site's heartbeat: due when no transaction has been seen for ``period_s`` and
    none was sent for as long (0 turns it off)."""

    __slots__ = ("period_s", "_seen", "_sent")

    def __init__(self, period_s: float, now: float) -> None:
        self.period_s = period_s
        self._seen = self._sent = now

    def saw_transaction(self, now: float) -> None:
        self._seen = now

    def due(self, now: float) -> bool:
        if not self.period_s or now - self._seen < self.period_s \
                or now - self._sent < self.period_s:
            return False
        self._sent = now
        return True
