"""The breaker policies the demo puts into the control plane at start (services hard-code none)."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration

from meshbreaker.config import BreakerConfig, ConfigLayer, WindowType
from meshbreaker.control import convert
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import xds_pb2

# Shared shape: judge on the last 20 calls, trip fast on a run of failures, probe again soon.
_BASE = BreakerConfig(
    window_type=WindowType.COUNT,
    window_size=20,
    minimum_calls=10,
    failure_rate_threshold=0.5,
    slow_call_rate_threshold=0.8,
    consecutive_failures=5,
    open_duration=2.0,
    open_duration_max=4.0,
    backoff_multiplier=2.0,
    open_jitter=0.1,
    half_open_max_calls=2,
    half_open_success_threshold=2,
)

# Selector service -> (config, why); the description travels with the policy for operators.
POLICIES: dict[str, tuple[BreakerConfig, str]] = {
    "bank.v1.AccountService": (
        _BASE.replace(slow_call_duration=0.5),
        "balances and postings: the critical read path",
    ),
    "bank.v1.TransactionService": (
        # A hung transaction service costs a full deadline per call: trip after 3 and probe
        # with a single call, so at most one caller waits while we find out.
        _BASE.replace(consecutive_failures=3, half_open_max_calls=1, slow_call_duration=0.8),
        "money movement: trip early, probe with one call",
    ),
    "bank.v1.NotificationService": (
        _BASE.replace(
            consecutive_failures=3,
            open_duration=1.5,
            open_duration_max=3.0,
            slow_call_duration=0.25,
            half_open_max_calls=1,
        ),
        "best effort: fail fast, never hold up a transfer",
    ),
    "bank.v1.AuditService": (
        _BASE.replace(
            consecutive_failures=3,
            open_duration=1.5,
            open_duration_max=3.0,
            slow_call_duration=0.4,
            half_open_max_calls=1,
        ),
        "compliance log: defer to the outbox while open",
    ),
}


# The account service's ledger database (meshbreaker.db), selected by its origin like a service.
LEDGER_DATABASE = (
    "sqlite://",
    _BASE.replace(consecutive_failures=3, open_duration=1.0, open_duration_max=2.0),
    "ledger database: refuse postings at once while SQLite fails",
)
# The email provider (meshbreaker.httpx): its origin is known once it runs.
EMAIL_PROVIDER = (
    _BASE.replace(
        consecutive_failures=3,
        open_duration=0.5,
        open_duration_max=5.0,
        slow_call_duration=None,
        half_open_max_calls=1,
        half_open_success_threshold=1,
    ),
    "email provider: messages wait in the outbox; Retry-After is honoured up to 5 s",
)


# With --xds: how the gateway's gRPC channel (xds:///accounts) ejects an account replica whose
# calls fail (gRFC A50 failure-percentage ejection), judged every half second.
ACCOUNT_EJECTION = pb.Policy(
    id="banking-account-ejection",
    selector=pb.Selector(caller="gateway", service="bank.v1.AccountService"),
    outlier_detection=xds_pb2.OutlierDetection(
        interval=Duration(nanos=500_000_000),
        base_ejection_time=Duration(seconds=3),
        max_ejection_time=Duration(seconds=10),
        max_ejection_percent=50,
        enforcing_success_rate=0,
        failure_percentage_threshold=50,
        enforcing_failure_percentage=100,
        failure_percentage_minimum_hosts=2,
        failure_percentage_request_volume=4,
    ),
    description="xDS: eject an account replica that fails half its calls (the gateway's channel)",
)


def policy_messages(email_origin: str | None = None, *, xds: bool = False) -> list[pb.Policy]:
    """The demo's policies: banking services, ledger database, email provider, xDS ejection."""
    service, config, description = LEDGER_DATABASE
    messages = [_policy("banking-ledger-db", service, config, description, caller="account")]
    if email_origin is not None:
        config, description = EMAIL_PROVIDER
        messages.append(
            _policy("banking-email", email_origin, config, description, caller="notification")
        )
    if xds:
        messages.append(ACCOUNT_EJECTION)
    for service, (config, description) in POLICIES.items():
        name = service.rsplit(".", 1)[-1].removesuffix("Service").lower()
        messages.append(_policy(f"banking-{name}", service, config, description))
    return messages


def _policy(
    policy_id: str, service: str, config: BreakerConfig, description: str, caller: str = ""
) -> pb.Policy:
    """A breaker policy for `service` (from `caller` only, when given)."""
    return pb.Policy(
        id=policy_id,
        selector=pb.Selector(caller=caller, service=service),
        config=convert.config_to_proto(config),
        description=description,
    )


def method_policy(
    policy_id: str, caller: str, method: str, layer: ConfigLayer, description: str
) -> pb.PutPolicyRequest:
    """A phase's own policy: `layer` on `caller`'s calls of `method`, ready to put."""
    policy = pb.Policy(
        id=policy_id,
        selector=pb.Selector(caller=caller, method=method),
        config=convert.layer_to_proto(layer),
        description=description,
    )
    return pb.PutPolicyRequest(policies=[policy])


def applies(layer: ConfigLayer, config: BreakerConfig) -> bool:
    """Whether an instance's effective `config` has every value `layer` sets."""
    return all(getattr(config, name) == value for name, value in layer.items())
