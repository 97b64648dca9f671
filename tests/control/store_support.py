"""Stores for the contract tests: the same tests run on a SQLite file and on a real etcd.

`open_store()` (a fixture, parametrised "sqlite" / "etcd") opens a handle on the test's store;
calling it again opens another handle on the SAME store (another replica, or a reopen after
close()). Every handle is closed at teardown. The etcd server is one per test worker; each test
gets its own key prefix on it.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

from meshbreaker.control.store import PolicyStore
from meshbreaker.control.store.etcd_server import EtcdServer

OpenStore = Callable[[], PolicyStore]

# The wall clock every contract-test store stamps its writes with.
WALL_CLOCK = 1_700_000_000.5


def etcd_json(etcd: EtcdServer, path: str, body: dict[str, object]) -> dict[str, Any]:
    """etcd's own answer to `body` POSTed to `path` of its JSON gateway (e.g. /v3/kv/range; keys
    and values in base64): what is stored, behind the store's back."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{etcd.client_port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer
