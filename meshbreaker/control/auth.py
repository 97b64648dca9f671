"""Bearer-token auth for the control plane: roles, constant-time checks, a grpc.aio interceptor."""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio

from meshbreaker.control.convert import check_caller
from meshbreaker.errors import ConfigError

_TRequest = TypeVar("_TRequest")
_TResponse = TypeVar("_TResponse")
_Metadata = Iterable[tuple[str, str | bytes]] | None

CONTROL_PLANE_SERVICE = "meshbreaker.v1.ControlPlane"
XDS_ADMIN_SERVICE = "meshbreaker.v1.XdsAdmin"
# Mutations need the admin token; everything else accepts the agent or the admin token.
ADMIN_METHODS: frozenset[str] = frozenset(
    [
        *(
            f"/{CONTROL_PLANE_SERVICE}/{name}"
            for name in ("PutPolicy", "DeletePolicy", "ForceState", "AdoptStore")
        ),
        *(f"/{XDS_ADMIN_SERVICE}/{name}" for name in ("PutCluster", "DeleteCluster")),
    ]
)
# xDS clients cannot always send a token: the ADS servicer authenticates them itself (a token, a
# client certificate verified by mutual TLS, or no token at all with --xds-allow-anonymous).
SELF_AUTHENTICATED_METHODS: frozenset[str] = frozenset(
    {"/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"}
)
# Health checks stay open so load balancers and orchestrators can probe without a token.
OPEN_METHOD_PREFIXES: tuple[str, ...] = ("/grpc.health.v1.Health/",)


class Role(str, enum.Enum):
    """Who a token belongs to."""

    ADMIN = "admin"
    AGENT = "agent"


def _digest(token: str) -> bytes:
    # Comparing fixed-size digests keeps the comparison constant-time in the token's length too.
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenAuthenticator:
    """Maps `authorization: Bearer <token>` metadata to a Role; open when no token is configured."""

    def __init__(
        self,
        admin_token: str | None = None,
        agent_token: str | None = None,
        service_tokens: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """`service_tokens` maps agent tokens to the caller services each may speak for."""
        service_tokens = dict(service_tokens or {})
        named = [("admin_token", admin_token), ("agent_token", agent_token)]
        named += [("agent_token_file", token) for token in service_tokens]
        for name, token in named:
            if token is not None and (not token or token != token.strip()):
                raise ConfigError(name, "must be non-empty, without surrounding whitespace")
        if (agent_token is not None or service_tokens) and admin_token is None:
            raise ConfigError("agent_token", "needs admin_token too (or nobody could administer)")
        if admin_token is not None and (
            admin_token == agent_token or admin_token in service_tokens
        ):
            raise ConfigError("agent_token", "must differ from admin_token")
        # (digest, role, services the token may speak for; None = any)
        self._tokens: list[tuple[bytes, Role, frozenset[str] | None]] = []
        if admin_token is not None:
            self._tokens.append((_digest(admin_token), Role.ADMIN, None))
        if agent_token is not None:
            self._tokens.append((_digest(agent_token), Role.AGENT, None))
        for token, services in service_tokens.items():
            allowed = frozenset(services)
            if not allowed:
                raise ConfigError("agent_token_file", "every token needs at least one service")
            self._tokens.append((_digest(token), Role.AGENT, allowed))

    @property
    def enabled(self) -> bool:
        """Whether tokens are required at all."""
        return bool(self._tokens)

    def role(self, metadata: _Metadata) -> Role | None:
        """The role of the bearer token in `metadata`, or None if missing or unknown."""
        found = self._match(metadata)
        return None if found is None else found[0]

    def services(self, metadata: _Metadata) -> frozenset[str] | None:
        """The caller services the token in `metadata` may speak for (None = any)."""
        found = self._match(metadata)
        return None if found is None else found[1]

    def _match(self, metadata: _Metadata) -> tuple[Role, frozenset[str] | None] | None:
        presented = bearer_token(metadata)
        if presented is None:
            return None
        digest = _digest(presented)
        found: tuple[Role, frozenset[str] | None] | None = None
        for expected, role, services in self._tokens:  # no early exit: same work for any token
            if hmac.compare_digest(digest, expected) and found is None:
                found = (role, services)
        return found

    def check(self, method: str, metadata: _Metadata) -> Denial | None:
        """None if the call may proceed, else the status code and message to refuse it with."""
        if not self._tokens or method.startswith(OPEN_METHOD_PREFIXES):
            return None
        if method in SELF_AUTHENTICATED_METHODS:
            return None
        role = self.role(metadata)
        if role is None:
            return Denial(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid token: send 'authorization: Bearer <token>'",
            )
        if method in ADMIN_METHODS and role is not Role.ADMIN:
            return Denial(grpc.StatusCode.PERMISSION_DENIED, f"{method} needs the admin token")
        return None

    def actor(self, metadata: _Metadata, peer: str) -> str:
        """Who made a call, for the audit log: "<role>@<peer>" ("anonymous" without tokens)."""
        role = self.role(metadata) if self._tokens else None
        return f"{role.value if role else 'anonymous'}@{peer}"


def load_token_file(path: str | os.PathLike[str]) -> dict[str, frozenset[str]]:
    """Agent tokens restricted to services, from lines "<token> <service>[,<service>...]".

    Blank lines and lines starting with '#' are skipped. Raises ConfigError naming the line.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError("agent_token_file", f"cannot read {os.fspath(path)!r}: {error}") from None
    tokens: dict[str, frozenset[str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"agent_token_file line {number}"
        if len(parts) != 2:
            raise ConfigError(where, "expected '<token> <service>[,<service>...]'")
        token, listed = parts
        services = frozenset(item for item in listed.split(",") if item)
        for service in services:
            check_caller(service, where, required=True)
        if token in tokens:
            raise ConfigError(where, "the same token is listed twice")
        tokens[token] = services
    if not tokens:
        raise ConfigError("agent_token_file", f"{os.fspath(path)!r} lists no token")
    return tokens


class Denial:
    """Why a call is refused."""

    __slots__ = ("code", "details")

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details


def bearer_token(metadata: _Metadata) -> str | None:
    """The token of the first `authorization: Bearer ...` entry, or None."""
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return None


def _refusing_handler(
    handler: grpc.RpcMethodHandler[Any, Any], denial: Denial
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind as `handler` that only aborts with `denial`."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(denial.code, denial.details)

    factory: Callable[..., grpc.RpcMethodHandler[Any, Any]]
    if handler.request_streaming and handler.response_streaming:
        factory = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        factory = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        factory = grpc.unary_stream_rpc_method_handler
    else:
        factory = grpc.unary_unary_rpc_method_handler
    return factory(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid token (UNAUTHENTICATED) or with the wrong role."""

    def __init__(self, authenticator: TokenAuthenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails],
            Awaitable[grpc.RpcMethodHandler[_TRequest, _TResponse] | None],
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_TRequest, _TResponse] | None:
        """Pass the call on, or swap its handler for one that refuses it."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        denial = self._authenticator.check(
            handler_call_details.method,
            handler_call_details.invocation_metadata,
        )
        if denial is None:
            return handler
        return _refusing_handler(handler, denial)
