"""Layered policies: each field from the most specific policy that sets it, else the process's."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from meshbreaker.cli.parser import build_parser
from meshbreaker.cli.policy_json import config_message_from
from meshbreaker.config import SCHEMA, BreakerConfig, Mode, State, WindowType
from meshbreaker.control import convert, layers
from meshbreaker.errors import ConfigError
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.config_examples import field_examples

METHOD = "/bank.v1.AccountService/GetBalance"
SERVICE = "bank.v1.AccountService"
PROCESS = BreakerConfig(
    window_type=WindowType.COUNT,
    window_size=20,
    failure_rate_threshold=0.9,
    slow_call_duration=None,
)


def _policy(
    policy_id: str,
    *,
    caller: str = "",
    service: str = "",
    method: str = "",
    override: pb.Override.ValueType = pb.OVERRIDE_NONE,
    **fields: Any,
) -> pb.Policy:
    message = pb.Policy(
        id=policy_id,
        selector=pb.Selector(caller=caller, service=service, method=method),
        override=override,
    )
    if fields:
        message.config.CopyFrom(convert.layer_to_proto(fields))
    return message


def test_a_policy_sets_only_the_fields_it_names() -> None:
    resolved = layers.policies_for(
        "gateway", [_policy("acct", service=SERVICE, consecutive_failures=3)], base=PROCESS
    )
    assert resolved.default is None  # no mesh default policy: the process keeps its own
    assert resolved.policies[SERVICE] == dataclasses.replace(PROCESS, consecutive_failures=3)


def test_fields_layer_method_over_service_over_mesh_default_over_process() -> None:
    policies = [
        _policy("mesh", open_duration=30.0, minimum_calls=4, mode=Mode.SHADOW),
        _policy("acct", service=SERVICE, consecutive_failures=3, minimum_calls=6),
        _policy("acct-gw", caller="gateway", service=SERVICE, minimum_calls=8),
        _policy("acct-tx", caller="transaction", service=SERVICE, minimum_calls=99),
        _policy("balance", method=METHOD, slow_call_duration=2.0, consecutive_failures=7),
    ]
    resolved = layers.policies_for("gateway", policies, base=PROCESS)
    mesh = dataclasses.replace(PROCESS, open_duration=30.0, minimum_calls=4, mode=Mode.SHADOW)
    assert resolved.default == mesh
    assert resolved.policies[SERVICE] == dataclasses.replace(
        mesh, consecutive_failures=3, minimum_calls=8
    )
    assert resolved.policies[METHOD] == dataclasses.replace(
        mesh, consecutive_failures=7, minimum_calls=8, slow_call_duration=2.0
    )

    explained = layers.explain("gateway", METHOD, policies, PROCESS)
    assert explained.config == resolved.policies[METHOD]
    assert explained.sources["consecutive_failures"] == f"method {METHOD} (policy balance)"
    assert explained.sources["minimum_calls"] == f"service {SERVICE} (policy acct-gw)"
    assert explained.sources["open_duration"] == "mesh default (policy mesh)"
    assert explained.sources["window_size"] == layers.PROCESS_DEFAULT
    assert explained.sources["open_duration_max"] == layers.PROCESS_DEFAULT  # 60 >= 30: not raised


def test_an_open_duration_beyond_the_cap_raises_an_unset_cap_and_says_so() -> None:
    policies = [_policy("acct", service=SERVICE, open_duration=120.0)]
    explained = layers.explain("gateway", METHOD, policies, PROCESS)
    assert (explained.config.open_duration, explained.config.open_duration_max) == (120.0, 120.0)
    assert explained.sources["open_duration_max"] == "process default, raised to open_duration"


def test_inconsistent_layers_are_refused_naming_the_policies() -> None:
    policies = [
        _policy("acct", service=SERVICE, open_duration_max=10.0),
        _policy("balance", method=METHOD, open_duration=30.0, open_duration_max=30.0),
        _policy("deposit", method="/bank.v1.AccountService/Deposit", open_duration=50.0),
    ]
    with pytest.raises(ConfigError, match="acct, deposit"):
        layers.policies_for("gateway", policies, base=PROCESS)
    # The mesh-wide layer is laid once: each of its policies is named once.
    mesh = [
        _policy("mesh", open_duration_max=10.0),
        _policy("gw", caller="gateway", open_duration=50.0),
    ]
    with pytest.raises(
        ConfigError, match=r"in the layered config of every method, from policies mesh, gw\)"
    ):
        layers.policies_for("gateway", mesh, base=PROCESS)


def test_an_override_comes_from_the_most_specific_policy_that_sets_one() -> None:
    policies = [
        _policy("acct", service=SERVICE, override=pb.OVERRIDE_FORCED_OPEN),
        _policy("balance", method=METHOD, override=pb.OVERRIDE_FORCED_CLOSED),
    ]
    explained = layers.explain("gateway", METHOD, policies, PROCESS)
    assert explained.override is State.FORCED_CLOSED
    assert explained.override_source == f"method {METHOD} (policy balance)"
    assert explained.config == PROCESS  # override-only policies set no field


def test_a_legacy_policy_mode_still_applies() -> None:
    legacy = pb.Policy(id="old", config=pb.BreakerConfig(), mode=pb.MODE_SHADOW)
    assert layers.policies_for("gateway", [legacy], base=PROCESS).default == dataclasses.replace(
        PROCESS, mode=Mode.SHADOW
    )


# ---------------------------------------------------------------------------------------------
# One schema


@pytest.mark.parametrize("name", list(SCHEMA))
def test_every_field_round_trips_alone_through_proto_flags_and_json(name: str) -> None:
    schema = SCHEMA[name]
    for value in field_examples(name):
        message = convert.layer_to_proto({name: value})
        assert message.ListFields(), f"{name} sets nothing in the proto"
        assert convert.layer_from_proto(message) == {name: value}
        # The same value typed as the flag's text, and as a JSON policy file's text.
        text = arg_types_text(value)
        args = build_parser().parse_args(["policy", "put", "--id", "p", schema.flags[0], text])
        assert getattr(args, name) == value
        assert convert.layer_from_proto(config_message_from({name: text})) == {name: value}


def arg_types_text(value: Any) -> str:
    if value is None:
        return "off"
    if isinstance(value, frozenset):
        return ",".join(sorted(value))
    return str(getattr(value, "value", value))


def test_the_schema_covers_every_field_once() -> None:
    fields = [f.name for f in dataclasses.fields(BreakerConfig)]
    assert list(SCHEMA) == fields
    flags = [flag for schema in SCHEMA.values() for flag in schema.flags]
    assert len(flags) == len(set(flags))
    assert {schema.proto for schema in SCHEMA.values()} <= set(
        pb.BreakerConfig.DESCRIPTOR.fields_by_name
    )
    # Every field has presence on the wire: "not set" is never confused with a zero value.
    for schema in SCHEMA.values():
        assert pb.BreakerConfig.DESCRIPTOR.fields_by_name[schema.proto].has_presence
