"""The fail-static cache cannot hurt: whatever the file holds, start() works and says so once."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshbreaker.config import BreakerConfig
from meshbreaker.control.agent import MeshAgent
from meshbreaker.control.agent_cache import FailStaticCache
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.control.agent_support import method_policy

UNREACHABLE = "127.0.0.1:1"
GOOD_SNAPSHOT = json_format.MessageToDict(
    pb.ConfigSnapshot(
        revision=4,
        service="transaction",
        policies=[method_policy("tight", BreakerConfig(consecutive_failures=2))],
    ),
    preserving_proto_field_name=True,
)


def _start_and_stop(path: Path) -> MeshAgent:
    registry = BreakerRegistry()
    agent = MeshAgent(UNREACHABLE, "transaction", registry, cache_path=path, backoff_max=0.2)
    agent.start()
    agent.stop()
    return agent


def _envelope(**changes: Any) -> dict[str, Any]:
    return {
        "format": 1,
        "service": "transaction",
        "revision": 4,
        "snapshot": GOOD_SNAPSHOT,
    } | changes


def _doc(**changes: Any) -> bytes:
    return json.dumps(_envelope(**changes)).encode()


_DEEP = "[" * 50_000 + "]" * 50_000
_BAD_POLICY = {"revision": 2, "policies": [{"id": "x", "config": {"window_size": -1}}]}

CORRUPTIONS: list[tuple[str, bytes]] = [
    ("policies as an object", json.dumps(_envelope(snapshot={"policies": {"a": 1}})).encode()),
    ("revision as text", json.dumps(_envelope(snapshot={"revision": "abc"})).encode()),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000),
    ("deep nesting inside", _doc().replace(b'"revision": 4', b'"x": ' + _DEEP.encode(), 1)),
    ("a list", b"[1, 2, 3]"),
    ("null", b"null"),
    ("not UTF-8", b"\xff\xfe\x00garbage"),
    ("format as a list", json.dumps(_envelope(format=[1])).encode()),
    ("service as an object", json.dumps(_envelope(service={"a": 1})).encode()),
    ("another service", json.dumps(_envelope(service="audit")).encode()),
    ("store id as a number", json.dumps(_envelope(store_id=7)).encode()),
    ("a bad policy", _doc(snapshot=_BAD_POLICY)),
    ("a snapshot for another service", _doc(snapshot={"service": "audit"})),
    ("empty", b""),
]  # fmt: skip


@pytest.mark.parametrize(("case", "content"), CORRUPTIONS, ids=[c for c, _ in CORRUPTIONS])
def test_every_corruption_is_ignored_with_one_warning_naming_the_file(
    tmp_path: Path, case: str, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="meshbreaker.control.agent"):
        agent = _start_and_stop(path)
    assert agent.applied_revision == 0 and not agent.applied_from_cache
    assert agent.registry.policies() == {}
    warnings = [r.getMessage() for r in caplog.records if "cache" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert str(path) in warnings[0] and len(warnings[0]) < 600


@pytest.mark.parametrize(("size", "refused"), [(16 * 2**20 + 1, True), (16 * 2**20, False)])
def test_a_file_over_16_mib_is_not_even_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, size: int, refused: bool
) -> None:
    """A cache file over 16 MiB (the bound DESIGN.md gives) is refused by its size alone."""
    path = tmp_path / "cache.json"
    with path.open("wb") as handle:
        handle.truncate(size)  # sparse: costs no disk
    with caplog.at_level(logging.WARNING):
        agent = _start_and_stop(path)
    assert agent.applied_revision == 0
    said = [r.getMessage() for r in caplog.records]
    assert any("more than a cache ever holds" in message for message in said) is refused


def test_a_directory_in_place_of_the_file_is_ignored_and_unwritable_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cache.json"
    path.mkdir()
    with caplog.at_level(logging.WARNING):
        agent = _start_and_stop(path)
    assert agent.applied_revision == 0
    assert any("not a regular file" in r.getMessage() for r in caplog.records)
    caplog.clear()
    cache = FailStaticCache(path, "transaction")  # os.replace onto a directory fails
    with caplog.at_level(logging.WARNING):
        for revision in (1, 2, 3):
            cache.save(pb.ConfigSnapshot(revision=revision), "store-a")
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1


def test_a_good_cache_still_applies_and_keeps_its_store_id(tmp_path: Path) -> None:
    path = tmp_path / "cache.json"
    FailStaticCache(path, "transaction").save(
        json_format.ParseDict(GOOD_SNAPSHOT, pb.ConfigSnapshot()), "store-a"
    )
    cached = FailStaticCache(path, "transaction").load()
    assert cached is not None and cached.store_id == "store-a"
    agent = _start_and_stop(path)
    assert agent.applied_revision == 4 and agent.applied_from_cache


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
# Values that look like the cache's own keys, so the random documents get past the first checks.
_cache_like = st.fixed_dictionaries(
    {},
    optional={
        "format": st.sampled_from([1, "1", None, 2]) | _json,
        "service": st.sampled_from(["transaction", "audit"]) | _json,
        "store_id": st.text(max_size=8) | _json,
        "snapshot": st.fixed_dictionaries(
            {},
            optional={
                "revision": st.integers() | _json,
                "service": st.sampled_from(["transaction", ""]) | _json,
                "policies": st.lists(_json, max_size=3) | _json,
            },
        )
        | _json,
    },
)
_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_SETTINGS
@given(document=_cache_like | _json)
def test_random_json_never_makes_start_raise(tmp_path: Path, document: Any) -> None:
    path = tmp_path / "cache.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    _start_and_stop(path)


@_SETTINGS
@given(content=st.binary(max_size=512))
def test_random_bytes_never_make_start_raise(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cache.json"
    path.write_bytes(content)
    agent = _start_and_stop(path)
    assert agent.applied_revision == 0
