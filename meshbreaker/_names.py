"""The one grammar of names: gRPC services, methods, breaker names, selectors and status codes.

Written once here, with no grpc import, for the engine, the adapters and the control plane alike.
Proto identifiers are `[A-Za-z_][A-Za-z0-9_]*`; a service is dotted identifiers
("bank.v1.AccountService"); a method is "/<service>/<identifier>". A breaker name is a method,
a target-prefixed method ("dns:///accounts:50051/bank.v1.AccountService/GetBalance"), an
endpoint URL, or any other string. An endpoint URL is `scheme://authority/path`: an HTTP route
("https://cards.example/v1/charges", meshbreaker.httpx) or a database ("sqlite:///ledger.db",
"postgresql://db:5432/ledger", meshbreaker.db). It is selected like a method, its origin
("https://cards.example", "postgresql://db:5432") like its service. A URL with one of gRPC's
resolver schemes ("dns:///host/pkg.Svc/M") is a channel target before a method instead.
"""

from __future__ import annotations

import re
from typing import Final

from meshbreaker.errors import ConfigError

MAX_NAME_LENGTH: Final = 512

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_SERVICE = rf"{_IDENT}(?:\.{_IDENT})*"
# Used with fullmatch: `$` would also accept a trailing newline.
_SERVICE_RE: Final = re.compile(_SERVICE)
_METHOD_RE: Final = re.compile(rf"/({_SERVICE})/{_IDENT}")
# The method at the end of a breaker name, after an optional target label.
_TAIL_RE: Final = re.compile(rf"(.*?)(/({_SERVICE})/{_IDENT})")
# A breaker shared by a service's methods: "/pkg.Svc/", after an optional target label.
_SERVICE_TAIL_RE: Final = re.compile(rf"(.*?)/({_SERVICE})/")
# An endpoint URL: origin (scheme, authority) and a path; no space, query or fragment. Schemes
# are lower case, as httpx and SQLAlchemy write them; an HTTP origin needs a host, a database's
# may have none ("sqlite:///ledger.db").
_ENDPOINT_ORIGIN = r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<authority>[^/\s?#]*)"
_ENDPOINT_ORIGIN_RE: Final = re.compile(_ENDPOINT_ORIGIN)
_ENDPOINT_NAME_RE: Final = re.compile(rf"({_ENDPOINT_ORIGIN})/[^\s?#]*")
_HOSTED_SCHEMES: Final = frozenset({"http", "https"})
# gRPC's resolver schemes: a name starting with one is a channel target, not an endpoint.
GRPC_TARGET_SCHEMES: Final = frozenset(
    {"dns", "xds", "unix", "unix-abstract", "ipv4", "ipv6", "vsock", "google-c2p"}
)
# The breaker shared by an origin's routes once a registry is full.
ENDPOINT_OVERFLOW_PATH: Final = "/*"
# The one breaker shared by names that are not gRPC methods, once a registry is full.
OVERFLOW_BREAKER_NAME: Final = "<overflow>"

# gRPC status code names, kept as strings so the engine never imports grpc.
GRPC_CODE_NAMES: Final[frozenset[str]] = frozenset(
    {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)
DEFAULT_FAILURE_CODES: Final[frozenset[str]] = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN", "DATA_LOSS", "RESOURCE_EXHAUSTED"}
)
DEFAULT_IGNORED_CODES: Final[frozenset[str]] = frozenset({"CANCELLED"})


def is_service_name(name: object) -> bool:
    """Whether `name` is a fully qualified gRPC service name, "pkg.v1.Service"."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_NAME_LENGTH
        and _SERVICE_RE.fullmatch(name) is not None
    )


def is_method_name(name: object) -> bool:
    """Whether `name` is a full gRPC method name, "/pkg.v1.Service/Method"."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_NAME_LENGTH
        and _METHOD_RE.fullmatch(name) is not None
    )


def _endpoint(match: re.Match[str] | None) -> re.Match[str] | None:
    """`match` if it is an endpoint's (not a gRPC target's, and hosted where HTTP needs a host)."""
    if match is None:
        return None
    scheme, authority = match.group("scheme"), match.group("authority")
    if scheme in GRPC_TARGET_SCHEMES or (not authority and scheme in _HOSTED_SCHEMES):
        return None
    return match


def _endpoint_name(name: str) -> re.Match[str] | None:
    """The match of an endpoint URL name (group 1: its origin), or None."""
    if len(name) > MAX_NAME_LENGTH:
        return None
    return _endpoint(_ENDPOINT_NAME_RE.fullmatch(name))


def is_endpoint_origin(name: object) -> bool:
    """Whether `name` is an endpoint's origin: "https://host[:port]", "postgresql://db:5432"."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_NAME_LENGTH
        and _endpoint(_ENDPOINT_ORIGIN_RE.fullmatch(name)) is not None
    )


def is_endpoint_name(name: object) -> bool:
    """Whether `name` is an endpoint URL breaker name: an HTTP route, a database."""
    return isinstance(name, str) and _endpoint_name(name) is not None


def is_method_selector(name: str) -> bool:
    """Whether a policy selector names one breaker's calls: a gRPC method or an endpoint URL."""
    return name.startswith("/") or is_endpoint_name(name)


def check_service(value: str, path: str) -> str:
    """`value` if it is a service name or empty; else ConfigError naming `path`."""
    if value and not is_service_name(value):
        raise ConfigError(path, f"{value!r} is not a gRPC service name like 'pkg.v1.Service'")
    return value


def check_method(value: str, path: str) -> str:
    """`value` if it is a full method name or empty; else ConfigError naming `path`."""
    if value and not is_method_name(value):
        raise ConfigError(
            path, f"{value!r} is not a full method name like '/pkg.v1.Service/Method'"
        )
    return value


def check_service_selector(value: str, path: str) -> str:
    """`value` if a policy may select it as a service: a gRPC service, an origin, or empty."""
    if value and not (is_service_name(value) or is_endpoint_origin(value)):
        raise ConfigError(
            path,
            f"{value!r} is not a gRPC service name like 'pkg.v1.Service' "
            "nor an origin like 'https://host:port' or 'postgresql://host:port'",
        )
    return value


def check_method_selector(value: str, path: str) -> str:
    """`value` if a policy may select it as a method: a gRPC method, an endpoint URL, or empty."""
    if value and not (is_method_name(value) or is_endpoint_name(value)):
        raise ConfigError(
            path,
            f"{value!r} is not a full method name like '/pkg.v1.Service/Method' nor an "
            "endpoint URL like 'https://host/v1/charges' or 'postgresql://host:5432/ledger'",
        )
    return value


def method_service(method: str) -> str:
    """The service of a method: "/pkg.Svc/M" -> "pkg.Svc"; "https://h/v1/x" -> "https://h"."""
    endpoint = _endpoint_name(method)
    if endpoint is not None:
        return endpoint.group(1)
    return method[1:].split("/", 1)[0]


def split_breaker_name(name: str) -> tuple[str, str, str]:
    """(target, gRPC service, full method) of a gRPC breaker name; ("", "", "") for other names.

    "/pkg.Svc/M" -> ("", "pkg.Svc", "/pkg.Svc/M"); "target/pkg.Svc/M" -> ("target", "pkg.Svc",
    "/pkg.Svc/M"); "payments" -> ("", "", "").
    """
    if len(name) > 2 * MAX_NAME_LENGTH:
        return ("", "", "")
    endpoint = _endpoint_name(name)
    if endpoint is not None:  # its origin is its service: ("", "https://h", "https://h/v1/x")
        return ("", endpoint.group(1), name)
    match = _TAIL_RE.fullmatch(name)
    if match is None:
        return ("", "", "")
    target, method, service = match.groups()
    # The target ends where the method begins, so "dns:///host/pkg.Svc/M" keeps "dns:///host".
    return (target, service, method)


def service_breaker_name(name: str) -> str:
    """The name of the breaker a full registry gives `name`: its service's, "target/pkg.Svc/".

    An endpoint URL's is its origin's, "https://h/*". Other names share OVERFLOW_BREAKER_NAME.
    """
    endpoint = _endpoint_name(name)
    if endpoint is not None:
        return f"{endpoint.group(1)}{ENDPOINT_OVERFLOW_PATH}"
    target, service, method = split_breaker_name(name)
    return f"{target}/{service}/" if method else OVERFLOW_BREAKER_NAME


def selectors_for(name: str) -> tuple[str, ...]:
    """The selectors that match breaker `name`, most specific first.

    "/pkg.Svc/M" -> ("/pkg.Svc/M", "pkg.Svc"); "target/pkg.Svc/M" -> (the name itself,
    "/pkg.Svc/M", "pkg.Svc"); a service's shared breaker "/pkg.Svc/" -> (itself, "pkg.Svc");
    an endpoint URL "https://h/v1/x" -> (itself, "https://h"); any other name matches only itself.
    """
    target, service, method = split_breaker_name(name)
    if not method:
        shared = _SERVICE_TAIL_RE.fullmatch(name) if len(name) <= 2 * MAX_NAME_LENGTH else None
        return (name,) if shared is None else (name, shared.group(2))
    if target:
        return (name, method, service)
    return (method, service)


def validate_selector(selector: object) -> None:
    """Raise ConfigError unless `selector` is a method, a service or a full breaker name."""
    if not isinstance(selector, str) or not selector:
        raise ConfigError("selector", f"must be a non-empty string, got {selector!r}")
    if selector.startswith("/"):
        if not is_method_name(selector):
            raise ConfigError(
                "selector", f"{selector!r} is not a method name like /pkg.v1.Service/Method"
            )
    elif "/" not in selector and not is_service_name(selector):
        raise ConfigError("selector", f"{selector!r} is not a service name like pkg.v1.Service")
