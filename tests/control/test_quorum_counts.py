"""The decider's quorum counts, kept incrementally, always equal a count from scratch.

Hypothesis runs random sequences of reports (new breakers, or the same mapping again), instances
joining, coming back under another service and expiring, and decider passes; after every pass
the counter must agree with a recount of every breaker of every live instance. (Policies do not
enter the counts: the decider reads them at each pass.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from meshbreaker._names import split_breaker_name
from meshbreaker.control.instances import InstanceTable
from meshbreaker.control.limits import Limits
from meshbreaker.control.quorum import OPEN_STATES, FleetCount, QuorumCounter
from meshbreaker.v1 import control_plane_pb2 as pb

STATES = [value for value in pb.BreakerState.values() if value != pb.BREAKER_STATE_UNSPECIFIED]
NAMES = [
    "/bank.v1.AccountService/Debit",
    "accounts/bank.v1.AccountService/Debit",  # the same method through another target
    "/bank.v1.AccountService/Credit",
    "https://mail.example:443",  # not a gRPC method: never counted
]
_RANK: dict[int, int] = {
    pb.BREAKER_STATE_OPEN: 3,
    pb.BREAKER_STATE_HALF_OPEN: 2,
    pb.BREAKER_STATE_FORCED_OPEN: 1,
}


@dataclass(frozen=True)
class Live:
    instance_id: str
    service: str
    breakers: Mapping[str, pb.BreakerSnapshot]


def recount(instances: Iterable[Live]) -> dict[tuple[str, str], FleetCount]:
    """The counts from scratch: every breaker of every live instance."""
    live: dict[str, int] = {}
    counts: dict[tuple[str, str], FleetCount] = {}
    for instance in instances:
        live[instance.service] = live.get(instance.service, 0) + 1
        for name, snapshot in instance.breakers.items():
            method = split_breaker_name(name)[2]
            if not method.startswith("/"):
                continue
            count = counts.setdefault(
                (instance.service, method), FleetCount(instance.service, method, 0)
            )
            seen = count.states.get(instance.instance_id)
            state = int(snapshot.state)
            if seen is None or _RANK.get(state, 0) > _RANK.get(seen, 0):
                count.states[instance.instance_id] = state
    for count in counts.values():
        count.live = live[count.service]
    return counts


# Snapshots made once: the counter reads only their state.
SNAPSHOTS = {
    (name, state): pb.BreakerSnapshot(name=name, state=state) for name in NAMES for state in STATES
}
breakers = st.dictionaries(st.sampled_from(NAMES), st.sampled_from(STATES), max_size=3).map(
    lambda states: {name: SNAPSHOTS[name, state] for name, state in states.items()}
)
steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("report"), st.integers(0, 3), st.sampled_from(["gateway", "batch"]), breakers
        ),
        st.tuples(st.just("again"), st.integers(0, 3)),  # a report that changed nothing
        st.tuples(st.just("expire"), st.sets(st.integers(0, 3), min_size=1)),  # several at once
        st.tuples(st.just("pass")),
    ),
    min_size=8,
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(steps)
def test_incremental_counts_equal_a_recount_after_any_sequence(
    sequence: list[tuple[object, ...]],
) -> None:
    counter = QuorumCounter()
    live: dict[str, Live] = {}
    for step in [*sequence, ("pass",)]:
        kind = step[0]
        if kind == "report":
            _, number, service, reported = step
            instance_id = f"i-{number}"
            assert isinstance(service, str) and isinstance(reported, dict)
            live[instance_id] = Live(instance_id, service, reported)  # a new mapping each report
        elif kind == "again" and f"i-{step[1]}" in live:
            held = live[f"i-{step[1]}"]
            live[held.instance_id] = Live(held.instance_id, held.service, held.breakers)
        elif kind == "expire":
            assert isinstance(step[1], set)
            for number in step[1]:
                live.pop(f"i-{number}", None)
        elif kind == "pass":
            counter.update(sorted(live.values(), key=lambda instance: instance.instance_id))
            expected = recount(live.values())
            assert counter.counts() == expected
            opened = sorted(key for key, count in expected.items() if count.open)
            assert counter.open_keys() == opened
            for key, count in expected.items():
                assert counter.count(*key) == count
                assert all(state in OPEN_STATES for state in (count.states[i] for i in count.open))


def test_a_report_replaces_the_breaker_mapping_it_never_changes_it_in_place() -> None:
    """The counter skips an instance whose mapping is the same object: the table must replace it."""
    table = InstanceTable(report_ttl=30.0, limits=Limits(), publish=lambda event: None)
    closed = pb.BreakerSnapshot(name=NAMES[0], state=pb.BREAKER_STATE_CLOSED)
    report = pb.ReportStateRequest(instance_id="gw-1", service="gateway", breakers=[closed])
    table.record(report, now=1.0)
    (before,) = table.views(1.0)
    held = dict(before.breakers)
    for full in (False, True):
        opened = pb.BreakerSnapshot(name=NAMES[0], state=pb.BREAKER_STATE_OPEN)
        report = pb.ReportStateRequest(
            instance_id="gw-1", service="gateway", breakers=[opened], full=full
        )
        table.record(report, now=2.0)
        (after,) = table.views(2.0)
        assert dict(before.breakers) == held  # what was handed out stayed as it was
        assert after.breakers is not before.breakers
        assert after.breakers[NAMES[0]].state == pb.BREAKER_STATE_OPEN
        before, held = after, dict(after.breakers)
    counter = QuorumCounter()
    counter.update(table.views(2.0))
    count = counter.count("gateway", NAMES[0])
    assert count is not None and count.open == ["gw-1"] and count.live == 1
