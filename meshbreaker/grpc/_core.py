"""What the sync and aio interceptors share: the Guard, rejection details, fallbacks, tracking."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc

from meshbreaker._names import GRPC_CODE_NAMES, is_method_name
from meshbreaker._types import State
from meshbreaker.breaker import CircuitBreaker, Outcome, Permit
from meshbreaker.config import check_code_sets
from meshbreaker.errors import BulkheadFullError, CallNotPermittedError, ConfigError
from meshbreaker.registry import BreakerRegistry

logger = logging.getLogger(__name__)

Fallback = Callable[[Any, BaseException], Any]

STATE_METADATA_KEY = "x-meshbreaker-state"
FALLBACK_METADATA_KEY = "x-meshbreaker-fallback"

# grpc's stubs type these ABCs narrowly (generic Future, _Metadatum tuples); the call objects
# here implement grpc's runtime protocol, so they subclass untyped aliases.
RpcErrorBase: Any = grpc.RpcError
CallBase: Any = grpc.Call
FutureBase: Any = grpc.Future

# StatusCode.name is a descriptor lookup; a dict is cheaper on the hot path.
CODE_NAMES: dict[grpc.StatusCode, str] = {code: code.name for code in grpc.StatusCode}

_SUCCESS, _FAILURE, _IGNORED = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED
_OK = grpc.StatusCode.OK

# Bounds the per-interceptor method cache against unbounded dynamic method names.
_MAX_CACHED_METHODS = 10_000


def normalize_codes(
    value: Iterable[str | grpc.StatusCode] | None, field: str
) -> frozenset[str] | None:
    """Code names from names or grpc.StatusCode members; None stays None; bad input raises."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, grpc.StatusCode)) or not isinstance(value, Iterable):
        raise ConfigError(
            field, "must be a collection of gRPC status code names or grpc.StatusCode"
        )
    names = set()
    for code in value:
        if isinstance(code, grpc.StatusCode):
            names.add(code.name)
        elif isinstance(code, str) and code.upper() in GRPC_CODE_NAMES:
            names.add(code.upper())
        else:
            raise ConfigError(field, f"{code!r} is not a gRPC status code")
    return frozenset(names)


def rejection_details(error: CallNotPermittedError) -> str:
    """The status details of a rejected call: method, state and time to the next probe."""
    if isinstance(error, BulkheadFullError):
        return (
            f"meshbreaker: bulkhead for {error.name} is full "
            f"(max_concurrent_calls in flight; state {error.state.value})"
        )
    if error.state is State.FORCED_OPEN or math.isinf(error.retry_after):
        probe = "no probe until the FORCED_OPEN override is cleared"
    else:
        probe = f"next probe in {max(error.retry_after, 0.0):.3f}s"
    return f"meshbreaker: circuit breaker for {error.name} is {error.state.value}; {probe}"


def rejection_code(error: CallNotPermittedError) -> grpc.StatusCode:
    """UNAVAILABLE for an open breaker, RESOURCE_EXHAUSTED for a full bulkhead."""
    if isinstance(error, BulkheadFullError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.UNAVAILABLE


class MethodInfo:
    """Per-method facts an interceptor looks up once: breaker name and fallback."""

    __slots__ = ("fallback", "name")

    def __init__(self, name: str, fallback: Fallback | None) -> None:
        self.name = name
        self.fallback = fallback


class Guard:
    """The adapter logic shared by the sync and aio interceptors of one configuration."""

    __slots__ = (
        "_failure_codes",
        "_ignored_codes",
        "fallback_on_failure",
        "fallbacks",
        "methods",
        "registry",
        "target",
    )

    def __init__(
        self,
        registry: BreakerRegistry | None = None,
        *,
        target: str | None = None,
        fallbacks: Mapping[str, Fallback] | None = None,
        fallback_on_failure: bool = False,
        failure_codes: Iterable[str | grpc.StatusCode] | None = None,
        ignored_codes: Iterable[str | grpc.StatusCode] | None = None,
    ) -> None:
        if registry is None:
            registry = BreakerRegistry()
        elif not isinstance(registry, BreakerRegistry):
            raise TypeError(f"registry must be a BreakerRegistry, got {type(registry).__name__}")
        if target is not None and (not isinstance(target, str) or not target or "/" in target):
            raise ConfigError("target", f"must be a non-empty string without '/', got {target!r}")
        checked: dict[str, Fallback] = {}
        if fallbacks is not None:
            if not isinstance(fallbacks, Mapping):
                raise ConfigError(
                    "fallbacks", "must be a mapping of '/pkg.Service/Method' to callables"
                )
            for method, fallback in fallbacks.items():
                if not is_method_name(method):
                    raise ConfigError(
                        "fallbacks", f"{method!r} is not a '/pkg.Service/Method' name"
                    )
                if not callable(fallback):
                    raise ConfigError("fallbacks", f"the fallback for {method} is not callable")
                checked[method] = fallback
        if not isinstance(fallback_on_failure, bool):
            raise ConfigError("fallback_on_failure", "must be a bool")
        failures = normalize_codes(failure_codes, "failure_codes")
        ignored = normalize_codes(ignored_codes, "ignored_codes")
        check_code_sets(failures, ignored)
        self.registry = registry
        self.target = target
        self.fallbacks = checked
        self.fallback_on_failure = fallback_on_failure
        self._failure_codes = failures
        self._ignored_codes = ignored
        # Read directly on the hot path: method (str; bytes on aio channels) -> MethodInfo.
        self.methods: dict[str | bytes, MethodInfo] = {}

    def method_info(self, method: str | bytes) -> MethodInfo:
        """The cached facts for `method` (str on sync channels, bytes on aio channels)."""
        info = self.methods.get(method)
        if info is None:
            text = method.decode("utf-8") if isinstance(method, bytes) else method
            name = text if self.target is None else f"{self.target}{text}"
            info = MethodInfo(name, self.fallbacks.get(text))
            if len(self.methods) < _MAX_CACHED_METHODS:
                self.methods[method] = info
        return info

    def fallback_applies(self, breaker: CircuitBreaker, code: grpc.StatusCode | None) -> bool:
        """Whether a call ending with `code` is a failure to cover by fallback; never raises."""
        try:
            return self.outcome(breaker, code) is _FAILURE
        except Exception:
            logger.exception("meshbreaker: classifying a failed call failed")
            return False

    def outcome(self, breaker: CircuitBreaker, code: grpc.StatusCode | None) -> Outcome:
        """How the final status `code` counts for `breaker`."""
        if code is _OK:  # the common case; StatusCode hashes in Python, identity does not
            ignored = self._ignored_codes
            if ignored is None:
                ignored = breaker.config.ignored_codes
            return _IGNORED if "OK" in ignored else _SUCCESS
        name = CODE_NAMES.get(code, "UNKNOWN")  # type: ignore[arg-type]
        failures, ignored = self._failure_codes, self._ignored_codes
        if failures is None:
            config = breaker.config
            if ignored is None:
                failures, ignored = config.failure_codes, config.ignored_codes
            else:
                failures = config.failure_codes - ignored
        elif ignored is None:
            ignored = breaker.config.ignored_codes - failures
        if name in failures:
            return _FAILURE
        if name in ignored:
            return _IGNORED
        return _SUCCESS

    def record(
        self,
        permit: Permit,
        breaker: CircuitBreaker,
        code: grpc.StatusCode | None,
        duration: float | None = None,
        *,
        quiet: bool = False,
    ) -> None:
        """Report the final status `code` on `permit`; never raises.

        `quiet` is for finalizers: no traceback formatting while the garbage collector runs.
        """
        try:
            permit.record(self.outcome(breaker, code), duration)
        except Exception:
            if quiet:
                logger.debug("meshbreaker: recording the outcome of a collected call failed")
                with contextlib.suppress(Exception):
                    permit.ignore()
            else:
                logger.exception("meshbreaker: recording the outcome of %s failed", breaker.name)
                release(permit)


class Tracker:
    """Reports one call's final status on its permit, once; the sync and aio trackers extend it."""

    __slots__ = ("_breaker", "_guard", "_permit", "first")

    def __init__(self, guard: Guard, breaker: CircuitBreaker, permit: Permit) -> None:
        self._guard = guard
        self._breaker = breaker
        self._permit = permit
        self.first: float | None = None

    def finish(self, code: grpc.StatusCode | None) -> None:
        """Record the final status; only the first report on a permit counts."""
        if not self._permit.done:
            self._guard.record(self._permit, self._breaker, code, self.first)

    def first_message(self) -> None:
        """Note the first response message's arrival (the slow-call measure for streams)."""
        try:
            self.first = self._permit.elapsed()
        except Exception:
            logger.exception("meshbreaker: timing the first message failed")
            self.first = 0.0

    def release(self) -> None:
        """The caller gave up on the call: ignore its outcome and free the permit."""
        release(self._permit)


def release(permit: Permit) -> None:
    """Ignore `permit` (give its slot back) without ever raising."""
    try:
        permit.ignore()
    except Exception:
        logger.exception("meshbreaker: releasing a permit failed")


def run_fallback(fallback: Fallback, request: Any, error: BaseException) -> tuple[bool, Any]:
    """(True, response) or (False, exception) from calling the user's fallback."""
    try:
        return True, fallback(request, error)
    except Exception as exception:
        logger.debug("meshbreaker: fallback raised", exc_info=True)
        return False, exception
