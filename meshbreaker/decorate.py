"""@circuit: guard any sync or async callable with a breaker, with an optional fallback."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from meshbreaker.breaker import CircuitBreaker
from meshbreaker.errors import CallNotPermittedError

F = TypeVar("F", bound=Callable[..., Any])
Fallback = Callable[[BaseException], Any]


def circuit(
    breaker: CircuitBreaker,
    *,
    fallback: Fallback | None = None,
    fallback_on_failure: bool = False,
) -> Callable[[F], F]:
    """Decorate a function so every call goes through `breaker`.

    `fallback(exc)` answers instead when the breaker rejects the call, and also when the call
    raises if `fallback_on_failure` is set. For async functions the fallback may be async too.
    """
    handled: tuple[type[BaseException], ...] = (
        (Exception,) if fallback_on_failure else (CallNotPermittedError,)
    )

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await breaker.call_async(fn, *args, **kwargs)
                except handled as exc:
                    if fallback is None:
                        raise
                    answer = fallback(exc)
                    return await answer if inspect.isawaitable(answer) else answer

            return cast(F, async_wrapper)

        call = breaker.call

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
