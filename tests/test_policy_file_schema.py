"""`policy list --json` prints what `policy put --file` takes back: every field of the schema.

The cases come from the schema itself (Policy's descriptor, the messages it holds, and
BreakerConfig's SCHEMA), one policy per field, so a field added to any of them fails here until
the policy file carries it. The policies go into the store first (a fleet decision is the
decider's to write), then through the real CLI against a real control plane and back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from meshbreaker.cli import main
from meshbreaker.cli.policy_json import READ_ONLY_KEYS, policy_document, policy_message
from meshbreaker.config import SCHEMA
from meshbreaker.control import convert, validate
from meshbreaker.control.limits import Limits
from meshbreaker.control.store import SqliteStore
from meshbreaker.testing import FakeClock
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.config_examples import field_examples
from tests.server_support import ControlPlane

START = 1_700_000_000.0
# Never written: the store sets these, and `mode` is read only from older clients (config.mode).
NOT_WRITTEN = READ_ONLY_KEYS | {"mode"}
_LEAF_MESSAGES = {"google.protobuf.Timestamp", "google.protobuf.Duration"}


def field_paths(descriptor: Descriptor, prefix: str = "") -> Iterator[str]:
    """Every field a policy can set, as a dotted path; a BreakerConfig by its SCHEMA names."""
    for field in descriptor.fields:
        if not prefix and field.name in NOT_WRITTEN:
            continue
        path = prefix + field.name
        message = field.message_type
        if message is None or message.full_name in _LEAF_MESSAGES:
            yield path
        elif message is pb.BreakerConfig.DESCRIPTOR:
            yield path  # present and empty: every default applies
            yield from (f"{path}.{name}" for name in SCHEMA)
        else:
            yield from field_paths(message, path + ".")


def scalar_example(field: FieldDescriptor) -> Any:
    """A value of the field's type that differs from its default and suits any such field."""
    message = field.message_type
    if message is not None and message.full_name == "google.protobuf.Timestamp":
        return convert.seconds_to_timestamp(START + 3600)
    if message is not None:  # a Duration
        return convert.seconds_to_duration(200.0)  # within every A50 range
    if field.enum_type is not None:
        return field.enum_type.values[1].number
    by_type = {
        FieldDescriptor.TYPE_STRING: "gw-1",
        FieldDescriptor.TYPE_DOUBLE: 0.25,
        FieldDescriptor.TYPE_INT64: 2,
        FieldDescriptor.TYPE_UINT32: 7,
    }
    return by_type[field.type]


def base_policy(path: str, index: int) -> pb.Policy:
    """A valid policy for the case of `path`, with what that field needs beside it."""
    service = f"bank.v1.Service{index}"
    policy = pb.Policy(
        id=f"case-{index}",
        selector=pb.Selector(caller="gateway", service=service, method=f"/{service}/Get"),
    )
    top = path.split(".")[0]
    if top in ("override_expires_at", "override_reason", "fleet"):
        policy.override = pb.OVERRIDE_FORCED_OPEN
        policy.override_expires_at.CopyFrom(convert.seconds_to_timestamp(START + 7200))
    if top == "fleet":  # the decider's: a caller and a method, a prober, a period
        policy.selector.service = ""
        policy.fleet.CopyFrom(
            pb.FleetDecision(
                probers=["gw-0"], open_until=convert.seconds_to_timestamp(START + 600),
                period=1, decided_at=convert.seconds_to_timestamp(START),
            )
        )  # fmt: skip
    if top == "outlier_detection":  # clients eject endpoints, not methods
        policy.selector.method = ""
    if top == "canary":
        policy.canary.percent = 10.0
    return policy


def case(path: str, index: int) -> list[pb.Policy]:
    """Policies that set the field at `path` (one per example value of a config field)."""
    *parents, name = path.split(".")
    if name in SCHEMA and parents and parents[-1] == "config":
        cases: list[pb.Policy] = []
        for value in field_examples(name):
            policy = base_policy(path, index * 100 + len(cases))
            holder = _walk(policy, parents)
            holder.CopyFrom(convert.layer_to_proto({name: value}))
            cases.append(policy)
        return cases
    policy = base_policy(path, index * 100)
    holder = _walk(policy, parents)
    field = holder.DESCRIPTOR.fields_by_name[name]
    if not field.is_repeated and field.message_type is None and getattr(holder, name):
        return [policy]  # the base sets it already (the selector, an id that must be unique)
    if field.message_type is pb.BreakerConfig.DESCRIPTOR:
        getattr(holder, name).SetInParent()
    elif field.is_repeated:
        getattr(holder, name).append(scalar_example(field))
    elif field.message_type is not None:
        getattr(holder, name).CopyFrom(scalar_example(field))
    else:
        setattr(holder, name, scalar_example(field))
    return [policy]


def _walk(policy: pb.Policy, names: list[str]) -> Any:
    holder: Any = policy
    for part in names:
        holder = getattr(holder, part)
    return holder


PATHS = list(field_paths(pb.Policy.DESCRIPTOR))


def test_the_cases_cover_the_schema() -> None:
    """Every path is set (not default) in its case's policy, so no field escapes the round trip."""
    assert {"override_expires_at", "override_reason", "canary.config.failure_rate_threshold"} < set(
        PATHS
    )
    for index, path in enumerate(PATHS):
        for policy in case(path, index):
            *parents, name = path.split(".")
            holder = _walk(policy, parents)
            if name in SCHEMA and parents[-1] == "config":
                assert name in convert.layer_from_proto(holder), path
            elif (field := holder.DESCRIPTOR.fields_by_name[name]).is_repeated:
                assert len(getattr(holder, name)) >= 1, path
            elif field.has_presence:
                assert holder.HasField(name), path
            else:
                assert getattr(holder, name) != field.default_value, path
            validate.check_put(pb.PutPolicyRequest(policies=[policy]), Limits())  # valid


def test_every_field_round_trips_through_the_document_alone() -> None:
    for index, path in enumerate(PATHS):
        for policy in case(path, index):
            document = json.loads(json.dumps(policy_document(policy)))
            assert policy_message(document) == policy, path


class Listed:
    """A real control plane over a store that already holds `policies`, and the CLI against it."""

    def __init__(self, db: Path, policies: list[pb.Policy], capsys: Any) -> None:
        store = SqliteStore(db)
        if policies:
            store.put(policies, actor="test")
        store.close()
        # A still wall clock: no override expires and no fleet decision moves on meanwhile.
        limits = Limits(max_policies_per_put=max(100, len(policies)))
        self.plane = ControlPlane(db, wall_clock=FakeClock(START), limits=limits)
        self._capsys = capsys

    def cli(self, *args: str) -> tuple[int, str, str]:
        status = main(["--target", self.plane.target, *args])
        captured = self._capsys.readouterr()
        return status, captured.out, captured.err

    def stored(self) -> list[pb.Policy]:
        listing = self.plane.stub.ListPolicies(pb.ListPoliciesRequest(), timeout=5)
        return [_without_store_fields(policy) for policy in listing.policies]


@pytest.fixture
def listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[..., Listed]]:
    started: list[Listed] = []

    def start(policies: list[pb.Policy]) -> Listed:
        started.append(Listed(tmp_path / "cp.db", policies, capsys))
        return started[-1]

    yield start
    for each in started:
        each.plane.close()


def test_policy_list_json_put_back_with_policy_put_file_changes_nothing(
    listed: Callable[..., Listed], tmp_path: Path
) -> None:
    written = [policy for index, path in enumerate(PATHS) for policy in case(path, index)]
    plane = listed(written)
    before = plane.stored()
    assert sorted(before, key=lambda p: p.id) == sorted(written, key=lambda p: p.id)
    status, out, err = plane.cli("policy", "list", "--json")
    assert status == 0, err
    path = tmp_path / "policies.json"
    path.write_text(out)
    status, out, err = plane.cli("policy", "put", "--file", str(path))
    assert status == 0, err
    assert out.splitlines()[-1] == "store revision 2"  # every one again, in one revision
    assert plane.stored() == before


def test_the_plain_listing_shows_the_canary_the_expiry_and_the_reason(
    listed: Callable[..., Listed],
) -> None:
    staged = base_policy("canary", 1)
    staged.config.CopyFrom(convert.layer_to_proto({"failure_rate_threshold": 0.5}))
    staged.canary.config.CopyFrom(convert.layer_to_proto({"failure_rate_threshold": 0.25}))
    staged.canary.max_rejection_margin = 0.1
    expiring = base_policy("override_reason", 2)
    expiring.override_reason = "payments incident 42"
    decided = base_policy("fleet", 3)
    decided.override_reason = "quorum: 2 of 3 live instances"
    plane = listed([staged, expiring, decided])
    status, out, err = plane.cli("policy", "list")  # not a terminal: nothing is cut
    assert status == 0, err
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("case-")}
    assert rows["case-1"].endswith(
        "failure_rate_threshold=0.5; canary 10%: failure_rate_threshold=0.25"
        " (rolled back past +0.1 rejections)"
    )
    assert "FORCED_OPEN until 2023-11-15T00:13:20Z" in rows["case-2"]
    assert rows["case-2"].endswith("(no config); reason: payments incident 42")
    assert rows["case-3"].endswith(
        "fleet decision, open period 1, probers gw-0; reason: quorum: 2 of 3 live instances"
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"override": "open", "override_expires_at": "tomorrow"}, "override_expires_at: must be"),
        ({"canary": {"percent": "ten"}}, "canary.percent: must be a number"),
        ({"canary": {"percent": 10, "size": 3}}, "canary.size: unknown canary key"),
        ({"canary": {"percent": 10, "config": {"open_duration": "soon"}}}, "canary.config."),
        ({"canary": {"percent": 100}}, "canary.percent: must be between 0 and 100"),
        ({"override_reason": "x" * 300, "override": "open"}, "override_reason: at most"),
    ],
)
def test_a_bad_field_of_a_file_is_one_line_naming_it_and_nothing_is_stored(
    listed: Callable[..., Listed], tmp_path: Path, entry: dict[str, Any], message: str
) -> None:
    plane = listed([])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"id": "bad", "method": "/bank.v1.S/Get", **entry}))
    status, _, err = plane.cli("policy", "put", "--file", str(path))
    assert status == 1
    assert message in err and err.count("\n") == 1, err
    assert plane.stored() == []


def test_a_put_may_carry_back_only_the_fleet_decision_stored_now(
    listed: Callable[..., Listed], tmp_path: Path
) -> None:
    decided = base_policy("fleet", 1)
    plane = listed([decided])
    status, out, _ = plane.cli("policy", "list", "--json")
    document = json.loads(out)
    document["policies"][0]["fleet"]["probers"] = ["gw-9"]  # as if written by hand
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(document))
    status, _, err = plane.cli("policy", "put", "--file", str(path))
    assert status == 1 and "policies[0].fleet: fleet decisions are written by" in err
    assert plane.stored() == [decided]


def _without_store_fields(policy: pb.Policy) -> pb.Policy:
    for name in ("revision", "updated_at", "updated_by"):
        policy.ClearField(name)
    return policy
