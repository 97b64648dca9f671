"""Bad input -> INVALID_ARGUMENT naming the field, nothing stored; convert round trips."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import pytest
from google.protobuf.duration_pb2 import Duration

from meshbreaker.breaker import CircuitBreaker
from meshbreaker.config import BreakerConfig, Mode, State, WindowType
from meshbreaker.control import convert, layers
from meshbreaker.control.server import ControlPlaneServer
from meshbreaker.errors import ConfigError
from meshbreaker.histogram import MAX_BUCKETS
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import control_plane_pb2_grpc as pb_grpc

Start = Callable[..., Awaitable[ControlPlaneServer]]
if TYPE_CHECKING:  # ControlPlaneAsyncStub exists for type checkers only
    # A bad request: takes the stub, returns what to await.
    Call = Callable[[pb_grpc.ControlPlaneAsyncStub], Awaitable[object]]


@pytest.fixture
async def stub(start_control_plane: Start) -> AsyncIterator[pb_grpc.ControlPlaneAsyncStub]:
    server = await start_control_plane()
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield pb_grpc.ControlPlaneStub(channel)


def _config(**fields: Any) -> pb.Policy:
    return pb.Policy(id="p", selector=pb.Selector(service="a.A"), config=pb.BreakerConfig(**fields))


def _policy(**fields: Any) -> pb.Policy:
    fields.setdefault("id", "p")
    return pb.Policy(**fields)


def _seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def _codes(*names: str) -> pb.CodeList:
    return pb.CodeList(codes=names)


BAD_POLICIES: list[tuple[str, pb.Policy, str]] = [
    ("empty id", _policy(id=""), "policies[0].id"),
    ("id with a space", _policy(id="a b"), "policies[0].id"),
    ("id too long", _policy(id="x" * 129), "policies[0].id"),
    ("negative open", _config(open_duration=_seconds(-1)), "policies[0].config.open_duration"),
    ("zero open", _config(open_duration=Duration()), "policies[0].config.open_duration"),
    (
        "negative slow",
        _config(slow_call_duration=_seconds(-0.5)),
        "policies[0].config.slow_call_duration",
    ),
    (
        "mixed-sign duration",
        _config(open_duration=Duration(seconds=1, nanos=-5)),
        "policies[0].config.open_duration",
    ),
    (
        "duration nanos of a whole second",
        _config(open_duration=Duration(seconds=1, nanos=1_000_000_000)),
        "policies[0].config.open_duration",
    ),
    (
        "max below open",
        _config(open_duration=_seconds(10), open_duration_max=_seconds(5)),
        "policies[0].config.open_duration_max",
    ),
    ("rate > 1", _config(failure_rate_threshold=1.5), "policies[0].config.failure_rate_threshold"),
    ("rate 0", _config(failure_rate_threshold=0.0), "policies[0].config.failure_rate_threshold"),
    (
        "rate NaN",
        _config(slow_call_rate_threshold=math.nan),
        "policies[0].config.slow_call_rate_threshold",
    ),
    ("jitter 1", _config(open_jitter=1.0), "policies[0].config.open_jitter"),
    ("backoff < 1", _config(backoff_multiplier=0.5), "policies[0].config.backoff_multiplier"),
    ("window 0", _config(window_size=0), "policies[0].config.window_size"),
    ("window < 0", _config(window_size=-5), "policies[0].config.window_size"),
    (
        "time window too long",
        _config(window_type=pb.WINDOW_TYPE_TIME, window_size=4000),
        "policies[0].config.window_size",
    ),
    ("minimum calls 0", _config(minimum_calls=0), "policies[0].config.minimum_calls"),
    (
        "negative consecutive",
        _config(consecutive_failures=-1),
        "policies[0].config.consecutive_failures",
    ),
    ("half-open 0", _config(half_open_max_calls=0), "policies[0].config.half_open_max_calls"),
    (
        "half-open wait negative",
        _config(half_open_max_wait=_seconds(-1)),
        "policies[0].config.half_open_max_wait",
    ),
    (
        "half-open successes 0",
        _config(half_open_success_threshold=0),
        "policies[0].config.half_open_success_threshold",
    ),
    ("bulkhead < 0", _config(max_concurrent_calls=-1), "policies[0].config.max_concurrent_calls"),
    (
        "unknown code",
        _config(failure_codes=_codes("UNAVAILABLE", "BROKEN")),
        "policies[0].config.failure_codes",
    ),
    ("OK as failure", _config(failure_codes=_codes("OK")), "policies[0].config.failure_codes"),
    (
        "failed and ignored",
        _config(failure_codes=_codes("INTERNAL"), ignored_codes=_codes("INTERNAL")),
        "policies[0].config.ignored_codes",
    ),
    (
        "too many codes",
        _config(failure_codes=_codes(*(["INTERNAL"] * 40))),
        "policies[0].config.failure_codes",
    ),
    (
        "slow off and on",
        _config(slow_calls_disabled=True, slow_call_duration=_seconds(1)),
        "policies[0].config.slow_calls_disabled",
    ),
    (
        "retry off and on",
        _config(retry_disabled=True, retry=pb.RetryPolicy(max_attempts=2)),
        "policies[0].config.retry_disabled",
    ),
    ("unknown window type", _config(window_type=7), "policies[0].config.window_type"),
    ("unknown mode", _policy(config=pb.BreakerConfig(), mode=9), "policies[0].mode"),
    ("mode without config", _policy(mode=pb.MODE_SHADOW), "policies[0].mode"),
    ("unknown override", _policy(selector=pb.Selector(service="a.A"), override=5), "override"),
    ("override for all", _policy(override=pb.OVERRIDE_FORCED_OPEN), "policies[0].override"),
    (
        "method without slash",
        _policy(selector=pb.Selector(method="GetBalance")),
        "policies[0].selector.method",
    ),
    (
        "method without name",
        _policy(selector=pb.Selector(method="/bank.v1.A")),
        "policies[0].selector.method",
    ),
    (
        "method too deep",
        _policy(selector=pb.Selector(method="/bank.v1.A/Get/More")),
        "policies[0].selector.method",
    ),
    (
        "method of another service",
        _policy(selector=pb.Selector(service="bank.v1.A", method="/bank.v1.B/Get")),
        "policies[0].selector.method",
    ),
    (
        "bad service",
        _policy(selector=pb.Selector(service="bank v1")),
        "policies[0].selector.service",
    ),
    (
        "bad caller",
        _policy(selector=pb.Selector(caller="no spaces!")),
        "policies[0].selector.caller",
    ),
    ("long description", _policy(description="d" * 2000), "policies[0].description"),
]


@pytest.mark.parametrize(
    ("policy", "field"), [(p, f) for _, p, f in BAD_POLICIES], ids=[n for n, _, _ in BAD_POLICIES]
)
async def test_bad_policy_is_invalid_argument_naming_the_field(
    stub: pb_grpc.ControlPlaneAsyncStub, policy: pb.Policy, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutPolicy(pb.PutPolicyRequest(policies=[policy]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")
    listed = await stub.ListPolicies(pb.ListPoliciesRequest())
    assert listed.revision == 0 and not listed.policies


good = pb.Policy(id="good", selector=pb.Selector(service="a.A"), config=pb.BreakerConfig())

BAD_PUTS: list[tuple[str, pb.PutPolicyRequest, str]] = [
    ("no policies", pb.PutPolicyRequest(), "policies: at least one"),
    (
        "duplicate id",
        pb.PutPolicyRequest(policies=[good, pb.Policy(id="good")]),
        "policies[1].id",
    ),
    (
        "duplicate selector",
        pb.PutPolicyRequest(policies=[good, pb.Policy(id="x", selector=good.selector)]),
        "policies[1].selector",
    ),
    (
        "second one bad",
        pb.PutPolicyRequest(policies=[good, _config(failure_rate_threshold=2)]),
        "policies[1].config.failure_rate_threshold",
    ),
    (
        "negative expected revision",
        pb.PutPolicyRequest(policies=[good], expected_revision=-1),
        "expected_revision",
    ),
]


@pytest.mark.parametrize(
    ("request_", "field"), [(r, f) for _, r, f in BAD_PUTS], ids=[n for n, _, _ in BAD_PUTS]
)
async def test_bad_put_stores_nothing(
    stub: pb_grpc.ControlPlaneAsyncStub, request_: pb.PutPolicyRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PutPolicy(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")
    assert (await stub.ListPolicies(pb.ListPoliciesRequest())).revision == 0


def _report(**fields: Any) -> Call:
    fields.setdefault("instance_id", "i")
    fields.setdefault("service", "tx")
    return lambda stub: stub.ReportState(pb.ReportStateRequest(**fields))


def _breaker(**fields: Any) -> list[pb.BreakerSnapshot]:
    fields.setdefault("name", "/a.A/M")
    fields.setdefault("state", pb.BREAKER_STATE_CLOSED)
    return [pb.BreakerSnapshot(**fields)]


def _transition(
    old: pb.BreakerState.ValueType, new: pb.BreakerState.ValueType, count: int = 1
) -> pb.TransitionCount:
    return pb.TransitionCount(from_state=old, to_state=new, count=count)


def _histogram(bounds: list[float], counts: list[int], total: float = 0.0) -> pb.DurationHistogram:
    return pb.DurationHistogram(bounds=bounds, counts=counts, sum=total)


_SELECTOR = pb.Selector(service="a.A")
# Each call takes the stub and returns what to await; the names are the test ids.
BAD_CALLS: list[tuple[str, Call, str]] = [
    ("get config, no service", lambda stub: stub.GetConfig(pb.GetConfigRequest()), "service"),
    (
        "watch, no service",
        lambda stub: stub.WatchConfig(pb.WatchConfigRequest()).read(),
        "service",
    ),
    (
        "watch, bad service",
        lambda stub: stub.WatchConfig(pb.WatchConfigRequest(service="a b")).read(),
        "service",
    ),
    ("report, no instance", _report(instance_id=""), "instance_id"),
    ("report, no service", _report(service=""), "service"),
    ("report, negative revision", _report(applied_revision=-1), "applied_revision"),
    ("report, unnamed breaker", _report(breakers=_breaker(name="")), "breakers[0].name"),
    (
        "report, unset state",
        _report(breakers=_breaker(state=pb.BREAKER_STATE_UNSPECIFIED)),
        "breakers[0].state",
    ),
    (
        "report, rate > 1",
        _report(breakers=_breaker(failure_rate=1.5)),
        "breakers[0].failure_rate",
    ),
    (
        "report, negative throttled",
        _report(breakers=_breaker(throttled=-1)),
        "breakers[0].throttled",
    ),
    (
        "report, negative concurrency limit",
        _report(breakers=_breaker(concurrency_limit=-1)),
        "breakers[0].concurrency_limit",
    ),
    (
        "report, NaN duration",
        _report(breakers=_breaker(mean_duration=math.nan)),
        "breakers[0].mean_duration",
    ),
    (
        "report, transition to the same state",
        _report(
            breakers=_breaker(
                transitions=[_transition(pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_CLOSED)]
            )
        ),
        "breakers[0].transitions[0]",
    ),
    (
        "report, transition listed twice",
        _report(
            breakers=_breaker(
                transitions=[
                    _transition(pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_OPEN),
                    _transition(pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_OPEN),
                ]
            )
        ),
        "breakers[0].transitions[1]",
    ),
    (
        "report, transition from an unset state",
        _report(
            breakers=_breaker(
                transitions=[_transition(pb.BREAKER_STATE_UNSPECIFIED, pb.BREAKER_STATE_OPEN)]
            )
        ),
        "breakers[0].transitions[0]",
    ),
    (
        "report, negative transition count",
        _report(
            breakers=_breaker(
                transitions=[_transition(pb.BREAKER_STATE_CLOSED, pb.BREAKER_STATE_OPEN, -1)]
            )
        ),
        "breakers[0].transitions[0].count",
    ),
    (
        "report, histogram bounds not increasing",
        _report(breakers=_breaker(duration_histogram=_histogram([0.5, 0.5], [0, 0, 0]))),
        "breakers[0].duration_histogram.bounds",
    ),
    (
        "report, histogram bound NaN",
        _report(breakers=_breaker(duration_histogram=_histogram([math.nan], [0, 0]))),
        "breakers[0].duration_histogram.bounds",
    ),
    (
        "report, histogram bound infinite",
        _report(breakers=_breaker(duration_histogram=_histogram([1.0, math.inf], [0, 0, 0]))),
        "breakers[0].duration_histogram.bounds",
    ),
    (
        "report, histogram without bounds",
        _report(breakers=_breaker(duration_histogram=_histogram([], [3]))),
        "breakers[0].duration_histogram.bounds",
    ),
    (
        "report, histogram with too many bounds",
        _report(breakers=_breaker(duration_histogram=_histogram(list(range(1, 102)), [0] * 102))),
        "breakers[0].duration_histogram.bounds",
    ),
    (
        "report, histogram counts short of +Inf",
        _report(breakers=_breaker(duration_histogram=_histogram([0.1, 1.0], [1, 2]))),
        "breakers[0].duration_histogram.counts",
    ),
    (
        "report, negative histogram count",
        _report(breakers=_breaker(duration_histogram=_histogram([0.1], [1, -1]))),
        "breakers[0].duration_histogram.counts",
    ),
    (
        "report, negative histogram sum",
        _report(breakers=_breaker(duration_histogram=_histogram([0.1], [1, 0], -0.5))),
        "breakers[0].duration_histogram.sum",
    ),
    (
        "list breakers, bad method",
        lambda stub: stub.ListBreakers(pb.ListBreakersRequest(method="/nope")),
        "method",
    ),
    (
        "list breakers, bad state",
        lambda stub: stub.ListBreakers(pb.ListBreakersRequest(state=pb.BreakerState.ValueType(42))),
        "state",
    ),
    (
        "list policies, bad caller",
        lambda stub: stub.ListPolicies(pb.ListPoliciesRequest(caller="a b")),
        "caller",
    ),
    ("delete, no id", lambda stub: stub.DeletePolicy(pb.DeletePolicyRequest()), "id"),
    (
        "delete, negative revision",
        lambda stub: stub.DeletePolicy(pb.DeletePolicyRequest(id="x", expected_revision=-2)),
        "expected_revision",
    ),
    (
        "force, empty selector",
        lambda stub: stub.ForceState(pb.ForceStateRequest(override=pb.OVERRIDE_FORCED_OPEN)),
        "selector",
    ),
    (
        "force, bad method",
        lambda stub: stub.ForceState(
            pb.ForceStateRequest(selector=pb.Selector(method="x"), override=pb.OVERRIDE_FORCED_OPEN)
        ),
        "selector.method",
    ),
    (
        "force, unknown override",
        lambda stub: stub.ForceState(
            pb.ForceStateRequest(selector=_SELECTOR, override=pb.Override.ValueType(9))
        ),
        "override",
    ),
    (
        "force, bad policy id",
        lambda stub: stub.ForceState(
            pb.ForceStateRequest(
                selector=_SELECTOR, override=pb.OVERRIDE_FORCED_OPEN, policy_id="a b"
            )
        ),
        "policy_id",
    ),
    (
        "events, bad service",
        lambda stub: stub.WatchEvents(pb.WatchEventsRequest(service="a b")).read(),
        "service",
    ),
]


@pytest.mark.parametrize(
    ("call", "field"), [(c, f) for _, c, f in BAD_CALLS], ids=[n for n, _, _ in BAD_CALLS]
)
async def test_bad_requests_name_the_field(
    stub: pb_grpc.ControlPlaneAsyncStub, call: Call, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(stub)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(field)
    assert (await stub.ListPolicies(pb.ListPoliciesRequest())).revision == 0
    assert not (await stub.ListBreakers(pb.ListBreakersRequest())).instances


# -- convert ------------------------------------------------------------------------------------


def test_config_round_trip() -> None:
    config = BreakerConfig(
        failure_rate_threshold=0.3,
        slow_call_rate_threshold=0.9,
        slow_call_duration=None,
        window_type=WindowType.COUNT,
        window_size=50,
        minimum_calls=7,
        consecutive_failures=0,
        open_duration=1.5,
        open_duration_max=30.0,
        backoff_multiplier=1.5,
        open_jitter=0.1,
        half_open_max_calls=2,
        half_open_success_threshold=2,
        half_open_max_wait=12.5,
        max_concurrent_calls=64,
        mode=Mode.SHADOW,
        failure_codes=frozenset({"INTERNAL"}),
        ignored_codes=frozenset({"CANCELLED", "NOT_FOUND"}),
    )
    message = convert.config_to_proto(config)
    assert message.mode == pb.MODE_SHADOW
    assert convert.config_from_proto(message) == config
    assert convert.config_from_proto(convert.config_to_proto(BreakerConfig())) == BreakerConfig()
    off = convert.config_to_proto(BreakerConfig(half_open_max_wait=0.0))
    assert off.HasField("half_open_max_wait")  # 0 = off is sent, not mistaken for "unset"
    assert convert.config_from_proto(off).half_open_max_wait == 0.0


def test_unset_fields_take_the_defaults() -> None:
    assert convert.config_from_proto(pb.BreakerConfig()) == BreakerConfig()
    # An open duration beyond the default maximum raises the maximum with it.
    config = convert.config_from_proto(pb.BreakerConfig(open_duration=_seconds(120)))
    assert (config.open_duration, config.open_duration_max) == (120.0, 120.0)
    lower_case = convert.config_from_proto(pb.BreakerConfig(failure_codes=_codes("internal")))
    assert lower_case.failure_codes == frozenset({"INTERNAL"})


def test_policy_round_trip() -> None:
    spec = convert.PolicySpec(
        "p1",
        convert.Selector("tx", "bank.v1.A", "/bank.v1.A/Get"),
        {"window_size": 5},
        State.FORCED_OPEN,
        "why",
    )
    assert convert.policy_from_proto(convert.policy_to_proto(spec)) == spec
    override_only = convert.PolicySpec(
        "p2", convert.Selector(service="a.A"), None, State.FORCED_CLOSED
    )
    message = convert.policy_to_proto(override_only)
    assert not message.HasField("config")
    assert convert.policy_from_proto(message) == override_only


def _p(policy_id: str, *, caller: str = "", service: str = "", method: str = "",
       rate: float | None = None,
       override: pb.Override.ValueType = pb.OVERRIDE_NONE) -> pb.Policy:  # fmt: skip
    message = pb.Policy(
        id=policy_id,
        selector=pb.Selector(caller=caller, service=service, method=method),
        override=override,
    )
    if rate is not None:
        message.config.failure_rate_threshold = rate
    return message


def test_policies_for_most_specific_wins() -> None:
    resolved = layers.policies_for(
        "tx",
        [
            _p("all", rate=0.9),
            _p("all-tx", caller="tx", rate=0.8),
            _p("svc", service="a.A", rate=0.7),
            _p("svc-tx", caller="tx", service="a.A", rate=0.6),
            _p("svc-gw", caller="gw", service="a.A", rate=0.1),
            _p("m", method="/a.A/Get", rate=0.5),
            _p("m-force", caller="tx", method="/a.A/Get", override=pb.OVERRIDE_FORCED_OPEN),
            _p("other-force", caller="gw", method="/a.A/Put", override=pb.OVERRIDE_FORCED_OPEN),
        ],
    )
    assert resolved.default is not None and resolved.default.failure_rate_threshold == 0.8
    assert {key: c.failure_rate_threshold for key, c in resolved.policies.items()} == {
        "a.A": 0.6,
        "/a.A/Get": 0.5,  # the caller-specific policy there has no config
    }
    assert resolved.overrides == {"/a.A/Get": State.FORCED_OPEN}


def test_policies_for_ties_and_absence() -> None:
    resolved = layers.policies_for(
        "tx", [_p("b", service="a.A", rate=0.2), _p("a", service="a.A", rate=0.3)]
    )
    assert resolved.policies["a.A"].failure_rate_threshold == 0.3  # smaller id wins a tie
    assert resolved.default is None
    assert layers.policies_for("tx", []) == layers.ResolvedPolicies()


def test_policies_for_names_the_bad_policy() -> None:
    with pytest.raises(ConfigError) as caught:
        layers.policies_for("tx", [_p("ok", rate=0.5), _p("bad", service="a.A", rate=7.0)])
    assert caught.value.field == "policies[1].config.failure_rate_threshold"


def test_snapshot_to_proto_makes_times_relative(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "/a.A/Get", BreakerConfig(consecutive_failures=1, open_duration=10.0), clock=clock
    )
    breaker.acquire().failure()
    clock.advance(4)
    message = convert.snapshot_to_proto(breaker.snapshot(), clock())
    assert message.name == "/a.A/Get"
    assert message.state == pb.BREAKER_STATE_OPEN
    assert (message.total, message.failed, message.times_opened) == (1, 1, 1)
    assert message.state_age == pytest.approx(4)
    assert message.open_remaining == pytest.approx(6)
    closed = convert.snapshot_to_proto(CircuitBreaker("/a.A/X", clock=clock).snapshot(), clock())
    assert not closed.HasField("open_remaining")
    assert convert.state_from_proto(message.state) is State.OPEN
    assert convert.state_from_proto(pb.BREAKER_STATE_UNSPECIFIED) is None


def test_breaker_to_proto_carries_transitions_and_the_histogram(clock: FakeClock) -> None:
    breaker = CircuitBreaker(
        "/a.A/Get",
        BreakerConfig(consecutive_failures=1, open_duration=10.0, open_jitter=0.0),
        clock=clock,
    )
    message = convert.breaker_to_proto(breaker, clock())
    assert not message.transitions and not message.HasField("duration_histogram")
    assert convert.histogram_from_proto(message) is None
    breaker.track_durations((0.1, 1.0))
    breaker.acquire().failure(0.5)
    clock.advance(10)
    breaker.acquire().success(0.05)  # the first probe: HALF_OPEN, waiting for more
    message = convert.breaker_to_proto(breaker, clock())
    assert message.state == pb.BREAKER_STATE_HALF_OPEN
    assert convert.transitions_from_proto(message.transitions) == {
        (State.CLOSED, State.OPEN): 1,
        (State.OPEN, State.HALF_OPEN): 1,
    }
    assert list(message.duration_histogram.counts) == [1, 1, 0]
    assert convert.histogram_from_proto(message) == breaker.duration_histogram()
    convert.check_transitions(message.transitions, "transitions")  # well formed: no error
    convert.check_histogram(message.duration_histogram, "duration_histogram")
    # As many bounds as the engine allows pass the server's check.
    widest = CircuitBreaker("/a.A/Wide", clock=clock)
    widest.track_durations([bound / 10 for bound in range(1, MAX_BUCKETS + 1)])
    convert.check_histogram(
        convert.breaker_to_proto(widest, clock()).duration_histogram, "duration_histogram"
    )


def test_a_code_list_holds_at_most_max_codes() -> None:
    codes = [name for name in ("UNAVAILABLE", "INTERNAL", "UNKNOWN", "ABORTED") for _ in range(8)]
    assert len(codes) == convert.MAX_CODES  # exactly the bound: accepted
    config = convert.config_from_proto(
        pb.BreakerConfig(
            failure_codes=_codes(*codes),
            retry=pb.RetryPolicy(max_attempts=2, retryable_codes=_codes(*codes)),
        )
    )
    assert config.retry is not None and len(config.retry.retryable_codes) == 4
    over = [*codes, "UNAVAILABLE"]
    with pytest.raises(ConfigError, match="at most 32 codes") as caught:
        convert.config_from_proto(pb.BreakerConfig(failure_codes=_codes(*over)))
    assert caught.value.field == "policy.config.failure_codes"
    with pytest.raises(ConfigError, match="at most 32 codes") as caught:
        convert.config_from_proto(
            pb.BreakerConfig(retry=pb.RetryPolicy(max_attempts=2, retryable_codes=_codes(*over)))
        )
    assert caught.value.field == "policy.config.retry.retryable_codes"
