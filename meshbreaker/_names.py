"""The one grammar of names: gRPC services, methods, breaker names, selectors and status codes.

Written once here, with no grpc import, for the engine, the adapters and the control plane alike.
Proto identifiers are `[A-Za-z_][A-Za-z0-9_]*`; a service is dotted identifiers
("bank.v1.AccountService"); a method is "/<service>/<identifier>". A breaker name is a method,
a target-prefixed method ("dns:///accounts:50051/bank.v1.AccountService/GetBalance"), an HTTP
route ("https://cards.example/v1/charges": origin and path, meshbreaker.httpx), or any other
string. An HTTP route is selected like a method, its origin ("https://cards.example") like its
service.
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
# An HTTP breaker name: the origin (scheme, host, port) and a path; no space, query or fragment.
_HTTP_ORIGIN = r"https?://[^/\s?#]+"
_HTTP_ORIGIN_RE: Final = re.compile(_HTTP_ORIGIN)
_HTTP_NAME_RE: Final = re.compile(rf"({_HTTP_ORIGIN})/[^\s?#]*")
# The breaker shared by an origin's routes once a registry is full.
HTTP_OVERFLOW_ROUTE: Final = "/*"
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


def is_http_origin(name: object) -> bool:
    """Whether `name` is an HTTP origin, "https://host[:port]"."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_NAME_LENGTH
        and _HTTP_ORIGIN_RE.fullmatch(name) is not None
    )


def is_http_name(name: object) -> bool:
    """Whether `name` is an HTTP breaker name, "https://host[:port]/route"."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_NAME_LENGTH
        and _HTTP_NAME_RE.fullmatch(name) is not None
    )


def is_method_selector(name: str) -> bool:
    """Whether a policy selector names one breaker's calls: a gRPC method or an HTTP route."""
    return name.startswith("/") or is_http_name(name)


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
    """`value` if a policy may select it as a service: a gRPC service, an HTTP origin, or empty."""
    if value and not (is_service_name(value) or is_http_origin(value)):
        raise ConfigError(
            path,
            f"{value!r} is not a gRPC service name like 'pkg.v1.Service' "
            "nor an HTTP origin like 'https://host:port'",
        )
    return value


def check_method_selector(value: str, path: str) -> str:
    """`value` if a policy may select it as a method: a gRPC method, an HTTP route, or empty."""
    if value and not (is_method_name(value) or is_http_name(value)):
        raise ConfigError(
            path,
            f"{value!r} is not a full method name like '/pkg.v1.Service/Method' "
            "nor an HTTP route like 'https://host/v1/charges'",
        )
    return value


def method_service(method: str) -> str:
    """The service of a method: "/pkg.Svc/M" -> "pkg.Svc"; "https://h/v1/x" -> "https://h"."""
    http = _HTTP_NAME_RE.fullmatch(method)
    if http is not None:
        return http.group(1)
    return method[1:].split("/", 1)[0]


def split_breaker_name(name: str) -> tuple[str, str, str]:
    """(target, gRPC service, full method) of a gRPC breaker name; ("", "", "") for other names.

    "/pkg.Svc/M" -> ("", "pkg.Svc", "/pkg.Svc/M"); "target/pkg.Svc/M" -> ("target", "pkg.Svc",
    "/pkg.Svc/M"); "payments" -> ("", "", "").
    """
    if len(name) > 2 * MAX_NAME_LENGTH:
        return ("", "", "")
    http = _HTTP_NAME_RE.fullmatch(name)
    if http is not None:  # its origin is its service: "https://h/v1/x" -> ("", "https://h", name)
        return ("", http.group(1), name)
    match = _TAIL_RE.fullmatch(name)
    if match is None:
        return ("", "", "")
    target, method, service = match.groups()
    # The target ends where the method begins, so "dns:///host/pkg.Svc/M" keeps "dns:///host".
    return (target, service, method)


def service_breaker_name(name: str) -> str:
    """The name of the breaker a full registry gives `name`: its service's, "target/pkg.Svc/".

    An HTTP route's is its origin's, "https://h/*". Other names share OVERFLOW_BREAKER_NAME.
    """
    http = _HTTP_NAME_RE.fullmatch(name) if len(name) <= 2 * MAX_NAME_LENGTH else None
    if http is not None:
        return f"{http.group(1)}{HTTP_OVERFLOW_ROUTE}"
    target, service, method = split_breaker_name(name)
    return f"{target}/{service}/" if method else OVERFLOW_BREAKER_NAME


def selectors_for(name: str) -> tuple[str, ...]:
    """The selectors that match breaker `name`, most specific first.

    "/pkg.Svc/M" -> ("/pkg.Svc/M", "pkg.Svc"); "target/pkg.Svc/M" -> (the name itself,
    "/pkg.Svc/M", "pkg.Svc"); a service's shared breaker "/pkg.Svc/" -> (itself, "pkg.Svc");
    "https://h/v1/x" -> (itself, "https://h"); any other name matches only itself.
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
