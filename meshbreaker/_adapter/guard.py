"""Guard: the facts and rules of one interceptor configuration, for the sync and aio shells."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping

import grpc

from meshbreaker._adapter.fallback import Fallback
from meshbreaker._names import GRPC_CODE_NAMES, is_method_name
from meshbreaker.breaker import CircuitBreaker, Outcome, Permit
from meshbreaker.config import check_code_sets
from meshbreaker.errors import ConfigError
from meshbreaker.registry import BreakerRegistry

logger = logging.getLogger(__name__)

# StatusCode.name is a descriptor lookup; a dict is cheaper on the hot path.
CODE_NAMES: dict[grpc.StatusCode, str] = {code: code.name for code in grpc.StatusCode}

_SUCCESS, _FAILURE, _IGNORED = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED
_OK = grpc.StatusCode.OK
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# What gRPC's own load balancing says when it refuses a call before it leaves the process: xDS
# circuit breaking (gRFC A32), EDS drop_overloads, a grpclb drop. A local refusal like the
# breaker's own, so it counts as rejected and never as a failure of the dependency.
LB_DROP_DETAILS = (
    "circuit breaker drop",
    "EDS-configured drop: ",
    "drop directed by grpclb balancer",
)


def is_lb_drop(code: grpc.StatusCode | None, details: str | None) -> bool:
    """Whether a call ending with `code` and `details` was dropped by the channel's balancer."""
    return code is _UNAVAILABLE and details is not None and details.startswith(LB_DROP_DETAILS)


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

    def counts_ok(self, breaker: CircuitBreaker) -> bool:
        """Whether an OK answer counts as a success for `breaker`, not ignored.

        OK is never a failure (check_code_sets), so only whether it is ignored is left to decide.
        """
        ignored = self._ignored_codes
        if ignored is None:
            ignored = breaker.config.ignored_codes
        return "OK" not in ignored

    def finish_free_ok(self, breaker: CircuitBreaker, generation: int, start: float) -> None:
        """Report an OK answer to a call admit_free() admitted at `start`; never raises.

        A free admission owes nothing back, so a report that fails is only logged.
        """
        try:
            if self.counts_ok(breaker):
                breaker.finish_free(generation, start)
            else:  # ignored: counted with how long it ran, as any other ignored outcome
                self.record(breaker.permit_for(generation, start), breaker, _OK)
        except Exception:
            logger.exception("meshbreaker: recording the outcome of %s failed", breaker.name)

    def record(
        self,
        permit: Permit,
        breaker: CircuitBreaker,
        code: grpc.StatusCode | None,
        duration: float | None = None,
        *,
        quiet: bool = False,
        details: str | None = None,
    ) -> None:
        """Report the final status `code` on `permit`; never raises.

        `details` (read only for UNAVAILABLE) tells a balancer's drop from a failure. `quiet` is
        for finalizers: no traceback formatting while the garbage collector runs.
        """
        try:
            if code is _OK:
                # outcome(breaker, OK) for the common case (StatusCode hashes in Python).
                permit.record(_SUCCESS if self.counts_ok(breaker) else _IGNORED, duration)
                return
            if details is not None and is_lb_drop(code, details):
                permit.ignore()
                breaker.count_local_refusal()
                return
            permit.record(self.outcome(breaker, code), duration)
        except Exception:
            if quiet:
                logger.debug("meshbreaker: recording the outcome of a collected call failed")
                with contextlib.suppress(Exception):
                    permit.ignore()
            else:
                logger.exception("meshbreaker: recording the outcome of %s failed", breaker.name)
                release(permit)


def release(permit: Permit) -> None:
    """Ignore `permit` (give its slot back) without ever raising."""
    try:
        permit.ignore()
    except Exception:
        logger.exception("meshbreaker: releasing a permit failed")
