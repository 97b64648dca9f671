"""The one name grammar (_names): the registry and the control plane accept the same names."""

from __future__ import annotations

import pytest

from meshbreaker import BreakerConfig, BreakerRegistry, ConfigError
from meshbreaker._names import (
    check_method,
    check_service,
    is_method_name,
    is_service_name,
    split_breaker_name,
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
        check_method(name, "method")
    with pytest.raises(ConfigError):
        convert.selector_from_proto(pb.Selector(method=name))
    if name.startswith("/"):
        with pytest.raises(ConfigError, match="not a method name"):
            BreakerRegistry().set_policy(name, BreakerConfig())


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
