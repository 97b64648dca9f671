"""The console's policy form holds every field of a policy, and its texts read back the same.

The page itself is driven in test_console_browser.py; these check, without a browser, what the
form is derived from (the Policy message and config.SCHEMA) and that no value is lost in its text.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor

from meshbreaker.cli.policy_json import policy_message
from meshbreaker.config import SCHEMA, check_layer
from meshbreaker.control import convert
from meshbreaker.control.console import form
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.config_examples import every_field_policy, field_examples

SELECTOR = pb.Selector(caller="transaction", service="bank.v1.FormService")


def _paths(descriptor: Descriptor, prefix: str, skip: frozenset[str]) -> set[str]:
    """Every field path of a message, a BreakerConfig's fields being SCHEMA's."""
    if descriptor.full_name == pb.BreakerConfig.DESCRIPTOR.full_name:
        return {prefix + name for name in SCHEMA}
    found = set()
    for field in descriptor.fields:
        if field.name in skip:
            continue
        message = field.message_type
        if message is not None and not message.full_name.startswith("google.protobuf."):
            found |= _paths(message, f"{prefix}{field.name}.", frozenset())
        else:
            found.add(prefix + field.name)
    return found


def _as_the_page_sends(texts: dict[str, str], sections: list[str]) -> dict[str, Any]:
    """The policy file entry forms.js builds from the inputs (PolicyForm.policy)."""
    entry: dict[str, Any] = {}
    for section in form.SECTIONS:
        parent = section.path.rpartition(".")[0]
        if parent and parent not in sections:
            continue
        held = not section.path or section.path in sections
        if section.path:
            _set(entry, section.path, {} if held else None)
        if held:
            for field in section.fields:
                if field["path"] in texts:
                    _set(entry, field["path"], texts[field["path"]])
    return entry


def _set(entry: dict[str, Any], path: str, value: Any) -> None:
    *above, name = path.split(".")
    for key in above:
        entry = entry[key]
    entry[name] = value


def test_the_form_holds_every_field_of_a_policy_but_what_it_leaves_alone() -> None:
    inputs = {field["path"] for section in form.SECTIONS for field in section.fields}
    assert inputs == _paths(pb.Policy.DESCRIPTOR, "", form.NOT_IN_FORM)
    assert {section.path for section in form.SECTIONS} == {
        "",
        "config",
        "outlier_detection",
        "canary",
        "canary.config",
    }
    assert set(pb.Policy.DESCRIPTOR.fields_by_name) >= form.NOT_IN_FORM  # no stale name


def test_a_policy_with_every_field_set_comes_back_from_the_form_unchanged() -> None:
    policy = every_field_policy("everything", SELECTOR)
    texts, sections = form.values(policy)
    assert sections == ["config", "outlier_detection", "canary", "canary.config"]
    entry = _as_the_page_sends(texts, sections)
    entry.update(id=policy.id, selector={"caller": "transaction", "service": SELECTOR.service})
    back = policy_message(entry)
    form.keep_owned(back, policy)
    assert back == policy


def test_sections_held_empty_are_kept_and_those_absent_stay_absent() -> None:
    policy = pb.Policy(
        id="empty", selector=SELECTOR, config=pb.BreakerConfig(), canary=pb.Canary(percent=5)
    )
    policy.outlier_detection.SetInParent()  # served with gRFC A50's defaults
    texts, sections = form.values(policy)
    assert sections == ["config", "outlier_detection", "canary"]
    entry = _as_the_page_sends(texts, sections)
    entry.update(id=policy.id, selector={"caller": "transaction", "service": SELECTOR.service})
    assert policy_message(entry) == policy


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name in SCHEMA for value in field_examples(name)]
    + [("failure_codes", frozenset()), ("ignored_codes", frozenset())],
)
def test_each_config_value_reads_back_from_its_text(name: str, value: Any) -> None:
    config = convert.layer_to_proto(check_layer({name: value}))
    texts, sections = form.values(pb.Policy(id="one", selector=SELECTOR, config=config))
    assert texts[f"config.{name}"] != ""  # an empty input would mean "not given"
    entry = _as_the_page_sends(texts, sections)
    assert policy_message({**entry, "id": "one"}).config == config


def test_a_put_keeps_the_override_its_expiry_and_reason_and_nothing_else() -> None:
    stored = every_field_policy("forced", SELECTOR)
    put = pb.Policy(id="forced", selector=SELECTOR, description="new")
    form.keep_owned(put, stored)
    assert put.override == stored.override
    assert put.override_reason == stored.override_reason
    assert put.override_expires_at == stored.override_expires_at
    assert (put.description, put.HasField("config")) == ("new", False)
