"""Stores for the contract tests: the same tests run on a SQLite file and on a real etcd.

`open_store()` (a fixture, parametrised "sqlite" / "etcd") opens a handle on the test's store;
calling it again opens another handle on the SAME store (another replica, or a reopen after
close()). Every handle is closed at teardown. The etcd server is one per test worker; each test
gets its own key prefix on it.
"""

from __future__ import annotations

from collections.abc import Callable

from meshbreaker.control.store import PolicyStore

OpenStore = Callable[[], PolicyStore]

# The wall clock every contract-test store stamps its writes with.
WALL_CLOCK = 1_700_000_000.5
