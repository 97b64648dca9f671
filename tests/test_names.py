"""The one name grammar (_names): the registry and the control plane accept the same names."""

from __future__ import annotations

import pytest

from meshbreaker import BreakerConfig, BreakerRegistry, ConfigError
from meshbreaker._names import (
    MAX_NAME_LENGTH,
    check_method,
    check_method_selector,
    check_service,
    check_service_selector,
    is_endpoint_name,
    is_method_name,
    is_method_selector,
    is_service_name,
    selectors_for,
    service_breaker_name,
    split_breaker_name,
    validate_selector,
)
from meshbreaker.control import convert
from meshbreaker.v1 import control_plane_pb2 as pb

GOOD_METHODS = ["/bank.v1.AccountService/GetBalance", "/A/b", "/_x.y_1/Z9"]
BAD_METHODS = [
    "/bank-v1.Svc/M",
    "/a.B/",
    "//M",
    "/a.B/M\n",
    "/a.B/M/N",
    "/1a.B/M",
    "/a..B/M",
    "a.B/M",
]


@pytest.mark.parametrize("name", GOOD_METHODS)
def test_good_methods_are_accepted_everywhere(name: str) -> None:
    assert is_method_name(name)
    BreakerRegistry().set_policy(name, BreakerConfig())
    convert.selector_from_proto(pb.Selector(method=name))


@pytest.mark.parametrize("name", BAD_METHODS)
def test_bad_methods_are_refused_everywhere(name: str) -> None:
    assert not is_method_name(name)
    with pytest.raises(ConfigError):
        check_method_selector(name, "method")
    with pytest.raises(ConfigError):
        convert.selector_from_proto(pb.Selector(method=name))
    if name.startswith("/"):
        with pytest.raises(ConfigError, match="not a method name"):
            BreakerRegistry().set_policy(name, BreakerConfig())


def test_a_method_selector_is_a_method_or_an_endpoint_url() -> None:
    assert check_method("/bank.v1.AccountService/GetBalance", "m") == (
        "/bank.v1.AccountService/GetBalance"
    )
    assert check_method("", "m") == ""
    assert is_method_selector("/bank.v1.AccountService/GetBalance") is True
    assert is_method_selector("https://api.example.com/v1/charges") is True
    assert is_method_selector("bank.v1.AccountService") is False


@pytest.mark.parametrize("selector", ["", 5, None, b"/a.B/M"])
def test_a_selector_that_is_no_non_empty_string_is_refused_by_name(selector: object) -> None:
    with pytest.raises(ConfigError, match="must be a non-empty string") as error:
        validate_selector(selector)
    assert error.value.field == "selector"


def test_an_endpoint_name_of_the_longest_length_is_one() -> None:
    origin = "https://api.example.com/"
    longest = origin + "a" * (512 - len(origin))  # DESIGN.md's bound, written out
    assert len(longest) == MAX_NAME_LENGTH
    assert is_endpoint_name(longest)
    assert not is_endpoint_name(longest + "a")


@pytest.mark.parametrize("bad", ["/pkg.Svc/M", "pkg-v1.Svc", "https://host/v1/x", "ftp:/host"])
def test_a_service_selector_that_is_no_service_nor_origin_is_refused_by_its_path(bad: str) -> None:
    """check_service_selector names the field it checks, as the control plane reports it."""
    with pytest.raises(ConfigError, match="not a gRPC service name") as error:
        check_service_selector(bad, "policy.selector.service")
    assert error.value.field == "policy.selector.service"


def test_a_method_name_of_the_longest_length_is_one() -> None:
    """is_method_name takes names of up to 512 characters."""
    longest = "/pkg.Svc/" + "M" * (512 - len("/pkg.Svc/"))  # DESIGN.md's bound, written out
    assert is_method_name(longest)
    assert not is_method_name(longest + "M")


def test_services() -> None:
    assert is_service_name("bank.v1.AccountService")
    assert check_service("", "service") == ""
    for bad in ("bank-v1", "a..b", "a.b\n", "x" * 513):
        assert not is_service_name(bad)
        with pytest.raises(ConfigError, match="service"):
            check_service(bad, "service")
        with pytest.raises(ConfigError):
            BreakerRegistry().set_policy(bad, BreakerConfig())


def test_split_names_with_a_target_that_holds_slashes() -> None:
    method = "/bank.v1.AccountService/GetBalance"
    assert split_breaker_name("dns:///accounts:50051" + method) == (
        "dns:///accounts:50051",
        "bank.v1.AccountService",
        method,
    )
    assert split_breaker_name("a/b/c/d") == ("a/b", "c", "/c/d")
    assert split_breaker_name("a/b/c-d/e") == ("", "", "")  # no method at its end
    assert split_breaker_name("x" * 5000 + method) == ("", "", "")  # bounded work


def test_names_up_to_twice_the_name_bound_are_split_and_longer_ones_are_not() -> None:
    """split_breaker_name and selectors_for read at most 2 * 512 characters (bounded work)."""
    method = "/pkg.Svc/M"
    longest = "t" * (1024 - len(method)) + method  # the bound, written out
    assert split_breaker_name(longest) == (longest[: -len(method)], "pkg.Svc", method)
    assert split_breaker_name("t" + longest) == ("", "", "")
    shared = "t" * (1024 - len("/pkg.Svc/")) + "/pkg.Svc/"  # a service's shared breaker
    assert selectors_for(shared) == (shared, "pkg.Svc")
    assert selectors_for("t" + shared) == ("t" + shared,)


ROUTE = "https://cards.example:8443/v1/cards/{id}/charges"
ORIGIN = "https://cards.example:8443"


def test_an_http_route_is_selected_like_a_method_and_its_origin_like_a_service() -> None:
    assert split_breaker_name(ROUTE) == ("", ORIGIN, ROUTE)
    assert selectors_for(ROUTE) == (ROUTE, ORIGIN)
    assert check_method_selector(ROUTE, "method") == ROUTE
    assert check_service_selector(ORIGIN, "service") == ORIGIN
    with pytest.raises(ConfigError):  # gRPC-only places (xDS clusters, fallbacks) keep gRPC names
        check_service(ORIGIN, "service")
    convert.selector_from_proto(pb.Selector(service=ORIGIN, method=ROUTE))
    registry = BreakerRegistry()
    registry.set_policy(ORIGIN, BreakerConfig(consecutive_failures=2))
    registry.set_policy(f"{ORIGIN}/v1/refunds", BreakerConfig(consecutive_failures=9))
    assert registry.get(ROUTE).config.consecutive_failures == 2
    assert registry.get(f"{ORIGIN}/v1/refunds").config.consecutive_failures == 9
    assert registry.get("https://other.example/v1").config == registry.default


@pytest.mark.parametrize(
    "name",
    [
        "https://cards.example",  # an origin, not a route
        "https://cards.example/v1/charges?x=1",
        "https://cards.example/v1/a b",
        "https:///v1/charges",
        "HTTPS://cards.example/v1",  # schemes are written in lower case
        "dns:///cards.example/v1",  # a gRPC channel target
        "https://cards.example/v1\n",
    ],
)
def test_what_is_not_an_endpoint_url_is_not_one(name: str) -> None:
    assert not is_endpoint_name(name)
    with pytest.raises(ConfigError):
        check_method_selector(name, "method")


DATABASE = "postgresql://db.internal:5432/ledger"
SQLITE = "sqlite:///var/lib/bank/account.db"


def test_a_database_is_selected_like_a_method_and_its_server_like_a_service() -> None:
    assert split_breaker_name(DATABASE) == ("", "postgresql://db.internal:5432", DATABASE)
    assert selectors_for(DATABASE) == (DATABASE, "postgresql://db.internal:5432")
    assert selectors_for(SQLITE) == (SQLITE, "sqlite://")  # every SQLite file of the process
    assert check_method_selector(SQLITE, "method") == SQLITE
    assert check_service_selector("postgresql://db.internal:5432", "service")
    registry = BreakerRegistry()
    registry.set_policy("postgresql://db.internal:5432", BreakerConfig(consecutive_failures=2))
    registry.set_policy(SQLITE, BreakerConfig(consecutive_failures=9))
    assert registry.get(DATABASE).config.consecutive_failures == 2
    assert registry.get(SQLITE).config.consecutive_failures == 9
    assert registry.get("sqlite:///other.db").config == registry.default


def test_a_grpc_target_url_before_a_method_stays_a_grpc_name() -> None:
    name = "dns://8.8.8.8/accounts:50051/bank.v1.AccountService/GetBalance"
    assert split_breaker_name(name)[1:] == (
        "bank.v1.AccountService",
        "/bank.v1.AccountService/GetBalance",
    )
    # A database whose host looks like a service is still a database.
    assert split_breaker_name("postgresql://db/ledger") == (
        "",
        "postgresql://db",
        "postgresql://db/ledger",
    )


def test_routes_past_max_breakers_share_their_origins_breaker() -> None:
    registry = BreakerRegistry(max_breakers=2)
    registry.get(f"{ORIGIN}/a")
    registry.get(f"{ORIGIN}/b")
    shared = registry.get(ROUTE)
    assert shared.name == service_breaker_name(ROUTE) == f"{ORIGIN}/*"
    assert registry.get("https://other.example/x").name == "https://other.example/*"
