"""Is this replica's consumer stuck outside its group? The guard against a client that never
rejoins.

librdkafka rejoins the consumer group by itself after a session timeout. But the fault suite saw
a broker frozen past its KRaft session be fenced and unfenced at once, its group coordinator
resign and take the group back while both sink replicas had a JoinGroup in flight: neither
replica joined again, and for minutes nothing reached the cloud while every log looked calm.
librdkafka's statistics say where its group client is (``cgrp.join_state``); a client that has
not been a steady member for ``stuck_after_s`` while there are site topics to read is replaced by
a new one (the sink session restarts; offsets live in the cloud, so nothing is lost or doubled).

Pure: fed the statistics and the clock, it answers how long the client has been out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: a client that has been out of its group this long is replaced (``sink.group_stuck_after_s``;
#: a rebalance of healthy replicas takes seconds, a frozen replica is dropped after
#: session.timeout.ms)
STUCK_AFTER_S = 60.0
#: how often librdkafka reports its statistics (``statistics.interval.ms``)
STATS_INTERVAL_MS = 5000


@dataclass(slots=True)
class GroupState:
    """The group part of one librdkafka statistics report."""

    state: str  # the coordinator side: "up" once the coordinator is known
    join_state: str  # the membership: "steady" once the member holds its assignment
    assignment_size: int

    @classmethod
    def from_stats(cls, stats_json: str) -> "GroupState | None":
        """From a ``stats_cb`` payload; None when it has no group part (not a group consumer)."""
        cgrp: dict[str, Any] | None = json.loads(stats_json).get("cgrp")
        if not cgrp:
            return None
        return cls(str(cgrp.get("state", "")), str(cgrp.get("join_state", "")),
                   int(cgrp.get("assignment_size", 0)))

    @property
    def member(self) -> bool:
        return self.state == "up" and self.join_state == "steady"


class GroupWatch:
    """Counts how long the client has been out of its group, from the reports it is fed."""

    def __init__(self, started: float, stuck_after_s: float = STUCK_AFTER_S) -> None:
        self.stuck_after_s = stuck_after_s
        self.last: GroupState | None = None
        self._out_since: float | None = started  # a new client starts outside

    def observe(self, state: GroupState | None, now: float) -> None:
        if state is None:
            return
        self.last = state
        if state.member:
            self._out_since = None
        elif self._out_since is None:
            self._out_since = now

    def out_for(self, now: float) -> float:
        """Seconds since the client was last seen a steady member (0 while it is one)."""
        return 0.0 if self._out_since is None else now - self._out_since

    def overdue(self, now: float) -> bool:
        """Out of the group for ``stuck_after_s`` or longer: time to ask whether it should be in
        (there are site topics), and if so to replace the client."""
        return self.out_for(now) >= self.stuck_after_s

    def describe(self) -> str:
        s = self.last
        return "no statistics yet" if s is None else \
            f"coordinator state {s.state!r}, join state {s.join_state!r}, " \
            f"{s.assignment_size} partition(s) assigned"
