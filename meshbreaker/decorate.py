"""@circuit: guard any sync or async callable with a breaker, with an optional fallback."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from meshbreaker.breaker import CircuitBreaker, ResultClassifier
from meshbreaker.errors import CallNotPermittedError

F = TypeVar("F", bound=Callable[..., Any])
Fallback = Callable[[BaseException], Any]


def circuit(
    breaker: CircuitBreaker,
    *,
    fallback: Fallback | None = None,
    fallback_on_failure: bool = False,
    is_failure: ResultClassifier | None = None,
) -> Callable[[F], F]:
    """Decorate a function so every call goes through `breaker`.

    `fallback(exc)` answers instead when the breaker rejects the call, and also when the call
    raises if `fallback_on_failure` is set. For async functions the fallback may be async too.
    `is_failure(result)`, when given, counts a returned result as a failure (the result is
    still returned), like resilience4j's recordResult.
    """
    handled: tuple[type[BaseException], ...] = (
        (Exception,) if fallback_on_failure else (CallNotPermittedError,)
    )

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    if is_failure is not None:
                        return await breaker.call_async_checked(is_failure, fn, *args, **kwargs)
                    return await breaker.call_async(fn, *args, **kwargs)
                except handled as exc:
                    if fallback is None:
                        raise
                    answer = fallback(exc)
                    return await answer if inspect.isawaitable(answer) else answer

            return cast(F, async_wrapper)

        call: Callable[..., Any] = breaker.call
        if is_failure is not None:
            call = functools.partial(breaker.call_checked, is_failure)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return call(fn, *args, **kwargs)
            except handled as exc:
                if fallback is None:
                    raise
                return fallback(exc)

        return cast(F, wrapper)

    return decorate
