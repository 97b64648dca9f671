"""BreakerRegistry: one breaker per name, policies method > service > default, atomic swaps."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshbreaker import BreakerConfig, BreakerRegistry, ConfigError, State
from meshbreaker._names import selectors_for, split_breaker_name
from meshbreaker.testing import FakeClock
from tests.lock_support import LockWatchingClock

METHOD = "/bank.v1.AccountService/GetBalance"


def test_selectors_for_names() -> None:
    assert selectors_for(METHOD) == (METHOD, "bank.v1.AccountService")
    assert selectors_for("accounts" + METHOD) == (
        "accounts" + METHOD,
        METHOD,
        "bank.v1.AccountService",
    )
    assert selectors_for("payments") == ("payments",)


def test_split_breaker_name() -> None:
    assert split_breaker_name(METHOD) == ("", "bank.v1.AccountService", METHOD)
    assert split_breaker_name("dns:///accounts:50051" + METHOD) == (
        "dns:///accounts:50051",
        "bank.v1.AccountService",
        METHOD,
    )
    for other in ("payments", "a/b", "/a.B/", "//M"):
        assert split_breaker_name(other) == ("", "", "")


def test_get_returns_the_same_breaker(clock: FakeClock) -> None:
    reg = BreakerRegistry(clock=clock)
    assert reg and len(reg) == 0  # an empty registry is still truthy
    assert reg.get(METHOD) is reg.get(METHOD)
    assert len(reg) == 1 and METHOD in reg and list(reg) == [reg.get(METHOD)]


def test_get_is_safe_under_threads() -> None:
    reg = BreakerRegistry()
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(reg.get(METHOD))) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(b) for b in seen}) == 1


@pytest.fixture
def switch_often() -> Iterator[None]:
    """The GIL changes hands every microsecond, so a race inside a comprehension shows."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.parametrize("owner", ["registry", "breaker"])
def test_listeners_come_and_go_from_many_threads_without_losing_one(
    switch_often: None, clock: FakeClock, owner: str
) -> None:
    # Unsubscribing filters the list into a new one and assigns it back: without the lock, a
    # listener subscribed while the filter ran would be dropped by that assignment.
    reg = BreakerRegistry(clock=clock)
    on_state_change = (
        reg.on_state_change if owner == "registry" else reg.get(METHOD).on_state_change
    )
    seen: list[int] = []

    def listener(number: int) -> Any:
        return lambda *_: seen.append(number)

    leaving = [on_state_change(listener(-1)) for _ in range(2000)]
    staying = list(range(600))

    def subscribe(numbers: list[int]) -> None:
        for number in numbers:
            on_state_change(listener(number))

    threads = [
        threading.Thread(target=lambda: [unsubscribe() for unsubscribe in leaving]),
        threading.Thread(target=subscribe, args=(staying[:300],)),
        threading.Thread(target=subscribe, args=(staying[300:],)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reg.get(METHOD).force_open()
    assert sorted(seen) == staying


CHANGES: dict[str, Callable[[BreakerRegistry], object]] = {
    "set_policy": lambda reg: reg.set_policy(METHOD, BreakerConfig(minimum_calls=7)),
    "remove_policy": lambda reg: reg.remove_policy(METHOD),
    "set_override": lambda reg: reg.set_override(METHOD, State.FORCED_OPEN),
    "replace_policies": lambda reg: reg.replace_policies({}),
    "get": lambda reg: reg.get("/pkg.Other/New"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_registry_changes_reach_the_breakers_under_its_lock(change: str) -> None:
    """A breaker read or made by each change reads the clock with the registry's lock taken."""
    clock = LockWatchingClock()
    reg = BreakerRegistry(clock=clock)
    reg.set_policy(METHOD, BreakerConfig(minimum_calls=3))
    reg.get(METHOD)
    clock.watch(reg._lock)
    CHANGES[change](reg)
    assert clock.taken and all(clock.taken)


def test_policy_resolution_method_over_service_over_default(clock: FakeClock) -> None:
    default = BreakerConfig(minimum_calls=1)
    service = BreakerConfig(minimum_calls=2)
    method = BreakerConfig(minimum_calls=3)
    reg = BreakerRegistry(default=default, clock=clock)
    reg.set_policy("bank.v1.AccountService", service)
    reg.set_policy(METHOD, method)
    assert reg.get(METHOD).config == method
    assert reg.get("/bank.v1.AccountService/Debit").config == service
    assert reg.get("/bank.v1.Other/X").config == default
    assert reg.get("accounts" + METHOD).config == method  # target prefix still matches


def test_set_policy_updates_live_breakers_keeping_their_window(clock: FakeClock) -> None:
    reg = BreakerRegistry(default=BreakerConfig(consecutive_failures=3), clock=clock)
    cb = reg.get(METHOD)
    cb.acquire().failure()
    cb.acquire().failure()
    reg.set_policy("bank.v1.AccountService", BreakerConfig(consecutive_failures=2))
    assert cb.config.consecutive_failures == 2
    assert cb.state is State.CLOSED and cb.snapshot().consecutive_failures == 2  # run kept
    cb.acquire().failure()
    assert cb.state is State.OPEN
    reg.remove_policy("bank.v1.AccountService")
    assert cb.config.consecutive_failures == 3


def test_bad_selectors_are_rejected(clock: FakeClock) -> None:
    reg = BreakerRegistry(clock=clock)
    for selector in ("", "/nomethod", "/a/b/c", "bad service", "/a b/c", "/a/b\n", "pkg.Svc\n"):
        with pytest.raises(ConfigError):
            reg.set_policy(selector, BreakerConfig())
    with pytest.raises(ConfigError):
        reg.set_policy("pkg.Svc", {"minimum_calls": 3})  # type: ignore[arg-type]


def test_replace_policies_is_all_or_nothing(clock: FakeClock) -> None:
    reg = BreakerRegistry(clock=clock)
    cb = reg.get(METHOD)
    good = BreakerConfig(minimum_calls=7)
    with pytest.raises(ConfigError) as info:
        reg.replace_policies({METHOD: good, "/broken": good})
    assert "selector" in str(info.value)
    with pytest.raises(ConfigError):
        reg.replace_policies({METHOD: good}, overrides={METHOD: State.OPEN})
    with pytest.raises(ConfigError, match="policy must be a BreakerConfig, got dict"):
        reg.replace_policies({METHOD: good, "pkg.Svc": {"minimum_calls": 3}})  # type: ignore[dict-item]
    with pytest.raises(ConfigError) as info:
        reg.replace_policies({METHOD: good}, overrides={"/broken": State.FORCED_OPEN})
    assert "selector" in str(info.value)
    assert reg.policies() == {} and cb.config == BreakerConfig()
    reg.replace_policies({METHOD: good}, default=BreakerConfig(minimum_calls=2))
    assert cb.config == good and reg.default.minimum_calls == 2
    reg.replace_policies({})
    assert cb.config.minimum_calls == 2


def test_set_override_checks_its_selector_and_none_returns_to_automatic(clock: FakeClock) -> None:
    reg = BreakerRegistry(clock=clock)
    cb = reg.get(METHOD)
    with pytest.raises(ConfigError) as info:
        reg.set_override("/broken", State.FORCED_OPEN)
    assert "selector" in str(info.value)
    reg.set_override("bank.v1.AccountService", State.FORCED_OPEN)
    assert cb.state is State.FORCED_OPEN
    reg.set_override("bank.v1.AccountService", None)
    assert cb.state is State.CLOSED and cb.override is None
    assert reg.get("/bank.v1.AccountService/Debit").override is None


def test_overrides_apply_to_existing_and_new_breakers(clock: FakeClock) -> None:
    reg = BreakerRegistry(clock=clock)
    existing = reg.get(METHOD)
    reg.replace_policies({}, overrides={"bank.v1.AccountService": State.FORCED_OPEN})
    assert existing.state is State.FORCED_OPEN
    assert reg.get("/bank.v1.AccountService/Debit").state is State.FORCED_OPEN
    reg.set_override(METHOD, State.FORCED_CLOSED)  # more specific wins
    assert existing.state is State.FORCED_CLOSED
    reg.replace_policies({})
    assert existing.state is State.CLOSED and existing.override is None
    with pytest.raises(ConfigError):
        reg.set_override(METHOD, State.HALF_OPEN)


def test_registry_listener_sees_breakers_created_later(clock: FakeClock) -> None:
    reg = BreakerRegistry(default=BreakerConfig(consecutive_failures=1), clock=clock)
    events: list[tuple[str, State, State]] = []
    unsubscribe = reg.on_state_change(lambda *e: events.append(e))

    def broken(*args: object) -> None:
        raise ZeroDivisionError("the listener is broken")

    reg.on_state_change(broken)  # a broken listener does not stop the others
    reg.get(METHOD).acquire().failure()
    assert events == [(METHOD, State.CLOSED, State.OPEN)]
    unsubscribe()
    reg.get("/x.Y/Z").acquire().failure()
    assert len(events) == 1


def test_snapshots_and_remove(clock: FakeClock) -> None:
    reg = BreakerRegistry(clock=clock)
    reg.get("/b.S/M").acquire().success()
    reg.get("/a.S/M")
    assert [s.name for s in reg.snapshots()] == ["/a.S/M", "/b.S/M"]
    old = reg.get("/b.S/M")
    reg.remove("/b.S/M")
    assert reg.get("/b.S/M") is not old and len(reg) == 2


def test_default_must_be_a_config() -> None:
    with pytest.raises(ConfigError):
        BreakerRegistry(default={"minimum_calls": 1})  # type: ignore[arg-type]


def test_past_max_breakers_new_methods_share_their_service_breaker(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    reg = BreakerRegistry(clock=clock, max_breakers=3)
    reg.set_policy("pkg.Bulk", BreakerConfig(consecutive_failures=1))
    own = [reg.get(f"/pkg.Own/M{i}") for i in range(3)]
    assert len({b.name for b in own}) == 3
    shared = reg.get("/pkg.Bulk/M100")
    assert shared.name == "/pkg.Bulk/"
    assert reg.get("/pkg.Bulk/M101") is shared
    assert reg.get("/pkg.Bulk/M100") is shared
    assert shared.config.consecutive_failures == 1  # the service's policy applies
    assert reg.get("not-a-method").name == "<overflow>"
    assert reg.overflowed_names == 3
    assert caplog.text.count("max_breakers=3") == 1  # warned once
    assert reg.get("/pkg.Own/M0") is own[0]  # names that had a breaker keep it


def test_breakers_stay_bounded_however_many_names_arrive(clock: FakeClock) -> None:
    reg = BreakerRegistry(clock=clock, max_breakers=10)
    for i in range(2000):
        reg.get(f"/pkg.S{i}/M{i}").acquire().success()
    assert len(reg) <= 2 * 10 + 1
    assert reg.overflowed_names == 2000 - 10


def test_at_most_max_breakers_overflowed_names_are_remembered(clock: FakeClock) -> None:
    reg = BreakerRegistry(clock=clock, max_breakers=3)
    for i in range(3):
        reg.get(f"/pkg.Own/M{i}")
    extra = [f"/pkg.Bulk/M{i}" for i in range(4)]
    for name in extra:
        reg.get(name)
    assert reg.overflowed_names == 4
    for name in extra[:3]:
        reg.get(name)  # remembered: counted once
    assert reg.overflowed_names == 4
    reg.get(extra[3])  # one past the bound, forgotten: counted again
    assert reg.overflowed_names == 5


def test_a_default_registry_holds_10_000_breakers_of_their_own(clock: FakeClock) -> None:
    """The documented default bound (DESIGN.md §3): the 10,001st method shares its service's."""
    reg = BreakerRegistry(clock=clock)
    for i in range(10_000):
        reg.get(f"/pkg.S/M{i}")
    assert reg.overflowed_names == 0
    assert reg.get("/pkg.S/M10000").name == "/pkg.S/"


def test_a_registry_tells_its_bound(clock: FakeClock) -> None:
    """max_breakers reads back as given."""
    assert BreakerRegistry(clock=clock, max_breakers=7).max_breakers == 7


def test_removing_a_shared_breaker_lets_its_names_share_a_fresh_one(clock: FakeClock) -> None:
    """The names that overflowed into a removed service breaker no longer reach it."""
    reg = BreakerRegistry(clock=clock, max_breakers=1)
    reg.get("/pkg.Own/M0")
    shared = reg.get("/pkg.Bulk/M1")
    assert shared.name == "/pkg.Bulk/"
    reg.remove("/pkg.Bulk/")
    again = reg.get("/pkg.Bulk/M1")
    assert again.name == "/pkg.Bulk/" and again is not shared


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "10"])
def test_max_breakers_is_validated(bad: object) -> None:
    with pytest.raises(ConfigError, match="max_breakers"):
        BreakerRegistry(max_breakers=bad)  # type: ignore[arg-type]


def test_removing_an_overflowed_name_lets_it_have_a_breaker_of_its_own(clock: FakeClock) -> None:
    reg = BreakerRegistry(clock=clock, max_breakers=2)
    own = [reg.get(f"/pkg.Own/M{i}") for i in range(2)]
    assert reg.get("/pkg.Bulk/M9").name == "/pkg.Bulk/"  # shares its service's breaker
    for breaker in own:  # room again (the service's shared breaker counts as one)
        reg.remove(breaker.name)
    reg.remove("/pkg.Bulk/M9")
    assert reg.get("/pkg.Bulk/M9").name == "/pkg.Bulk/M9"
