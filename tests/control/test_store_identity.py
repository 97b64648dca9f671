"""Revisions never go backwards silently: store ids, kept policies, and the operator's word."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from meshbreaker.cli import main
from meshbreaker.config import BreakerConfig
from meshbreaker.control.agent import MeshAgent
from meshbreaker.control.agent_cache import FailStaticCache
from meshbreaker.registry import BreakerRegistry
from meshbreaker.v1 import control_plane_pb2 as pb
from tests.control.agent_support import (
    METHOD,
    AdminStub,
    ControlPlaneThread,
    method_policy,
    wait_until,
)

TIGHT = BreakerConfig(consecutive_failures=2)


def _put(stub: object, policy_id: str, method: str = METHOD) -> int:
    request = pb.PutPolicyRequest(policies=[method_policy(policy_id, TIGHT, method)])
    return int(stub.PutPolicy(request, timeout=5).revision)  # type: ignore[attr-defined]


def _agent(target: str) -> MeshAgent:
    return MeshAgent(
        target, "gateway", BreakerRegistry(), report_interval=60.0, backoff_max=0.1
    ).start()


def _status(target: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["status", "--target", target, "--instances"]) == 0
    return capsys.readouterr().out


def test_a_control_plane_on_another_store_does_not_wipe_an_agents_policies(
    control_plane_thread: ControlPlaneThread,
    admin_stub: AdminStub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cp = control_plane_thread(db=tmp_path / "a.db")
    stub = admin_stub(cp.target)
    old_store = cp.running.store.store_id
    agent = _agent(cp.target)
    try:
        assert agent.wait_for_revision(_put(stub, "tight"), timeout=30)
        assert agent.applied_store_id == old_store
        cp.stop()
        cp.db = tmp_path / "empty.db"  # restarted on an empty database: store id, revision 0
        cp.start()
        new_store = cp.running.store.store_id
        assert new_store != old_store
        assert wait_until(lambda: agent.store_mismatch is not None)
        mismatch = agent.store_mismatch
        assert mismatch is not None and mismatch.reason == "another store"
        assert (mismatch.held_store_id, mismatch.offered_store_id) == (old_store, new_store)
        assert agent.registry.resolve(METHOD) == TIGHT  # kept
        assert agent.applied_revision == 1
        assert agent.report_now()
        out = _status(cp.target, capsys)
        assert out.startswith("STORE MISMATCH: 1 instance(s)")
        assert f"meshbreaker store adopt {old_store}" in " ".join(out.split())

        assert main(["store", "adopt", old_store, "--target", cp.target]) == 0
        assert new_store in capsys.readouterr().out
        assert wait_until(lambda: agent.applied_store_id == new_store)
        assert agent.store_mismatch is None and agent.applied_revision == 0
        assert agent.registry.policies() == {}
        assert agent.report_now()
        assert "STORE MISMATCH" not in _status(cp.target, capsys)
    finally:
        agent.stop()


def test_an_agent_never_applies_a_lower_revision_of_the_same_store(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub, tmp_path: Path
) -> None:
    cp = control_plane_thread(db=tmp_path / "a.db")
    stub = admin_stub(cp.target)
    _put(stub, "first")
    backup = tmp_path / "backup.db"
    with sqlite3.connect(tmp_path / "a.db") as source, sqlite3.connect(backup) as copy:
        source.backup(copy)
    agent = _agent(cp.target)
    try:
        assert agent.wait_for_revision(
            _put(stub, "second", "/bank.v1.AccountService/Deposit"), timeout=30
        )
        cp.stop()
        cp.db = backup  # the same store restored from an older backup: revision 1
        cp.start()
        assert cp.running.store.store_id == agent.applied_store_id
        assert wait_until(lambda: agent.store_mismatch is not None)
        mismatch = agent.store_mismatch
        assert mismatch is not None
        assert mismatch.reason == "a lower revision of the same store"
        assert (mismatch.held_revision, mismatch.offered_revision) == (2, 1)
        assert agent.applied_revision == 2
        # The operator accepts the restored store as it is.
        stub.AdoptStore(pb.AdoptStoreRequest(store_id=agent.applied_store_id), timeout=5)
        assert wait_until(lambda: agent.applied_revision == 1 and agent.store_mismatch is None)
    finally:
        agent.stop()


def _cached_revision(cache: Path) -> int:
    cached = FailStaticCache(cache, "gateway").load() if cache.exists() else None
    return -1 if cached is None else cached.snapshot.revision


def test_the_cache_remembers_the_store(
    control_plane_thread: ControlPlaneThread, admin_stub: AdminStub, tmp_path: Path
) -> None:
    cp = control_plane_thread(db=tmp_path / "a.db")
    stub = admin_stub(cp.target)
    cache = tmp_path / "agent.json"
    registry = BreakerRegistry()
    with MeshAgent(cp.target, "gateway", registry, cache_path=cache, report_interval=60.0) as agent:
        assert agent.wait_for_revision(_put(stub, "tight"), timeout=30)
        # The cache is written off the loop after the apply: wait for revision 1 in it.
        assert wait_until(lambda: _cached_revision(cache) == 1)
    store = cp.running.store.store_id
    cp.stop()
    cp.db = tmp_path / "empty.db"
    cp.start()
    # A process restarted from its cache still refuses the other store's empty config.
    with MeshAgent(cp.target, "gateway", BreakerRegistry(), cache_path=cache,
                   report_interval=60.0) as agent:  # fmt: skip
        assert agent.applied_from_cache and agent.applied_store_id == store
        assert wait_until(lambda: agent.store_mismatch is not None)
        assert agent.registry.resolve(METHOD) == TIGHT
