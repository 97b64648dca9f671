"""Console requests answered by the gRPC API's own code: its auth check, then its RPC handler.

The console never validates or writes on its own: a request is checked by the same
`TokenAuthenticator.check` as the gRPC interceptor, for the gRPC method it stands for, and is
answered by the servicer's handler for that method, so a policy put from the page meets the
same validation, compare-and-set and audit as `meshbreaker policy put`, and its refusal carries
the same message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio

from meshbreaker.control.auth import CONTROL_PLANE_SERVICE, TokenAuthenticator
from meshbreaker.control.validate import Refused

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

# gRPC status -> HTTP status of the console's JSON answer.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status(refusal: Refused) -> int:
    """The HTTP status the console answers a refusal with."""
    return HTTP_STATUS.get(refusal.code, 500)


def refusal_body(refusal: Refused) -> dict[str, str]:
    """The JSON body of a refusal: the gRPC code's name and the server's own message."""
    return {"code": refusal.code.name, "message": refusal.details}


class HttpCallContext(grpc.aio.ServicerContext[Any, Any]):
    """The servicer context of a unary RPC made from the console: who asks, and abort().

    The unary handlers the console calls read the caller's metadata and peer (auth, audit
    actor) and abort; the streaming and compression parts of a context are never used by them.
    """

    def __init__(self, authorization: str | None, peer: str) -> None:
        self._metadata = (
            grpc.aio.Metadata()
            if authorization is None
            else grpc.aio.Metadata(("authorization", authorization))
        )
        self._peer = peer

    def invocation_metadata(self) -> grpc.aio.Metadata:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> dict[str, Iterable[bytes]]:
        return {}

    def peer_identities(self) -> Iterable[bytes] | None:
        return None

    def peer_identity_key(self) -> str | None:
        return None

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: grpc.aio.Metadata | Sequence[tuple[str, str | bytes]] = (),
    ) -> NoReturn:
        raise Refused(code, details)

    async def abort_with_status(self, status: Any) -> NoReturn:
        raise Refused(status.code, status.details)

    def _unused(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("the console calls unary handlers only")

    read = write = send_initial_metadata = set_trailing_metadata = _unused
    set_code = set_details = set_compression = disable_next_message_compression = _unused


def authorize(authenticator: TokenAuthenticator, method: str, context: HttpCallContext) -> None:
    """Refuse (Refused) a caller the gRPC interceptor would refuse for ControlPlane/`method`."""
    denial = authenticator.check(
        f"/{CONTROL_PLANE_SERVICE}/{method}", context.invocation_metadata()
    )
    if denial is not None:
        raise Refused(denial.code, denial.details)


async def call(
    authenticator: TokenAuthenticator,
    handler: Callable[[_Request, grpc.aio.ServicerContext[Any, Any]], Awaitable[_Response]],
    request: _Request,
    context: HttpCallContext,
) -> _Response:
    """Check the token as the gRPC interceptor would for the handler's method, then run it.

    `handler` is a ControlPlaneServicer method (its name is the gRPC method's). Call it on the
    server's event loop. Raises Refused with the gRPC code and message.
    """
    authorize(authenticator, handler.__name__, context)
    return await handler(request, context)
