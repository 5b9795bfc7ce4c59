"""How long a consumer has been outside its group, from librdkafka's statistics."""

from __future__ import annotations

import json

from sinks.group_watch import GroupState, GroupWatch

# the "cgrp" parts of statistics librdkafka 2.16 reported: a consumer whose JoinGroup waits on
# a member that does not rejoin, then the same consumer once it holds its partition
WAITING = {"state": "up", "stateage": 9941, "join_state": "wait-join", "rebalance_age": 0,
           "rebalance_cnt": 0, "rebalance_reason": "Metadata for subscribed topic(s) has changed",
           "assignment_size": 0}
STEADY = {"state": "up", "stateage": 59977, "join_state": "steady", "rebalance_age": 19460,
          "rebalance_cnt": 1, "rebalance_reason": "Metadata for subscribed topic(s) has changed",
          "assignment_size": 1}


def stats(cgrp: dict | None) -> str:
    body = {"name": "rdkafka#consumer-1", "type": "consumer", "brokers": {}, "topics": {}}
    if cgrp is not None:
        body["cgrp"] = cgrp
    return json.dumps(body)


def test_the_group_part_of_a_statistics_report() -> None:
    assert GroupState.from_stats(stats(STEADY)) == GroupState("up", "steady", 1)
    assert GroupState.from_stats(stats(STEADY)).member
    assert not GroupState.from_stats(stats(WAITING)).member
    assert not GroupState("query-coord", "steady", 0).member  # no coordinator: not in
    assert GroupState.from_stats(stats(None)) is None  # a producer's report


def test_out_of_the_group_counts_from_the_last_steady_report() -> None:
    watch = GroupWatch(started=100.0, stuck_after_s=60)
    assert watch.out_for(130.0) == 30.0  # a new consumer starts outside
    watch.observe(GroupState.from_stats(stats(STEADY)), 131.0)
    assert watch.out_for(500.0) == 0.0 and not watch.overdue(500.0)
    watch.observe(GroupState.from_stats(stats(WAITING)), 500.0)
    watch.observe(GroupState.from_stats(stats(WAITING)), 540.0)  # still out: from 500
    assert watch.out_for(559.0) == 59.0 and not watch.overdue(559.0)
    assert watch.overdue(560.0)
    assert "'wait-join'" in watch.describe()
    watch.observe(GroupState.from_stats(stats(STEADY)), 561.0)  # back in: the count starts over
    assert not watch.overdue(1000.0)


def test_a_report_without_a_group_part_changes_nothing() -> None:
    watch = GroupWatch(started=0.0, stuck_after_s=10)
    watch.observe(None, 5.0)
    assert watch.overdue(10.0) and watch.describe() == "no statistics yet"
