"""Budgeted retries: RetryPolicy, Finagle's RetryBudget, full-jitter backoff, pushback (gRFC A6).

No gRPC here: the adapters give a RetryRun each attempt's status code name, whether the request
may have reached the server, and the server's `grpc-retry-pushback-ms`; it answers how long to
wait before the next attempt, or None for "do not retry".
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from meshbreaker._backoff import grow
from meshbreaker._names import GRPC_CODE_NAMES
from meshbreaker.errors import ConfigError

PUSHBACK_METADATA_KEY: Final = "grpc-retry-pushback-ms"
MAX_ATTEMPTS: Final = 10
# Finagle's bounds for a deposit's lifetime.
MIN_BUDGET_TTL: Final = 1.0
MAX_BUDGET_TTL: Final = 60.0
# A pushback longer than a day is as good as "do not retry": no deadline waits that long.
_MAX_PUSHBACK_MS: Final = 86_400_000
# Integer tokens, as Finagle does, so a ratio like 0.2 costs no rounding: a request deposits
# _SCALE, a retry withdraws _SCALE / ratio.
_SCALE: Final = 1000
# The budget's window is `ttl` long, kept in this many slices (Finagle's WindowedAdder).
_SLICES: Final = 10


@dataclass(frozen=True)
class RetryPolicy:
    """How a method's failed calls are retried: attempts, backoff, codes and a retry budget.

    Attempt n + 1 waits a delay drawn uniformly from [0, min(max_backoff, initial_backoff *
    multiplier ** (n - 1))] (full jitter), unless the server's `grpc-retry-pushback-ms` says how
    long (then the backoff starts over). Retries are budgeted per method as in Finagle: over the
    last `budget_ttl` seconds, at most `budget_ratio` of the calls made plus
    `budget_min_per_second` per second.
    """

    max_attempts: int = 3
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0
    retryable_codes: frozenset[str] = field(default=frozenset({"UNAVAILABLE"}))
    budget_ratio: float = 0.2
    budget_min_per_second: int = 10
    budget_ttl: float = 10.0

    def __post_init__(self) -> None:
        _check_int(self.max_attempts, "max_attempts", 1, MAX_ATTEMPTS)
        for name in ("initial_backoff", "max_backoff", "multiplier", "budget_ratio", "budget_ttl"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))  # 1 and 1.0 are one policy
        _check_number(self.initial_backoff, "initial_backoff", 0.0)
        if self.initial_backoff <= 0:
            raise ConfigError("retry.initial_backoff", "must be > 0")
        _check_number(self.max_backoff, "max_backoff", self.initial_backoff)
        _check_number(self.multiplier, "multiplier", 1.0)
        codes = self.retryable_codes
        if isinstance(codes, str) or not all(
            isinstance(code, str) and code.upper() in GRPC_CODE_NAMES for code in codes
        ):
            raise ConfigError("retry.retryable_codes", "must be a collection of gRPC code names")
        upper = frozenset(code.upper() for code in codes)
        if "OK" in upper:
            raise ConfigError("retry.retryable_codes", "OK is not a failure to retry")
        object.__setattr__(self, "retryable_codes", upper)
        _check_number(self.budget_ratio, "budget_ratio", 0.0)
        if self.budget_ratio > _SCALE:
            raise ConfigError("retry.budget_ratio", f"must be <= {_SCALE}")
        _check_int(self.budget_min_per_second, "budget_min_per_second", 0, 1_000_000)
        _check_number(self.budget_ttl, "budget_ttl", MIN_BUDGET_TTL)
        if self.budget_ttl > MAX_BUDGET_TTL:
            raise ConfigError("retry.budget_ttl", f"must be in [1, {MAX_BUDGET_TTL:g}] seconds")

    def __str__(self) -> str:
        """The command-line form: "max_attempts=3,initial_backoff=0.05,...,retryable_codes=A|B"."""
        values = self.to_dict()
        values["retryable_codes"] = "|".join(values["retryable_codes"])
        return ",".join(f"{name}={value}" for name, value in values.items())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values; codes as a sorted list."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["retryable_codes"] = sorted(self.retryable_codes)
        return values

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> RetryPolicy:
        """A policy from a mapping (JSON, or parsed text); codes as a list or "A|B" text."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"retry.{unknown[0]}", f"unknown field (known: {', '.join(sorted(names))})"
            )
        checked = dict(values)
        codes = checked.get("retryable_codes")
        if isinstance(codes, str):
            checked["retryable_codes"] = frozenset(code for code in codes.split("|") if code)
        # A list or set of codes goes as it is: __post_init__ checks each code before it hashes
        # one (a JSON list holding a list is a ConfigError, not frozenset's TypeError).
        return cls(**checked)

    @classmethod
    def from_text(cls, text: str) -> RetryPolicy:
        """Parse the command-line form (any subset of fields; the rest take defaults)."""
        values: dict[str, Any] = {}
        for part in text.split(","):
            name, equals, raw = part.strip().partition("=")
            if not equals or not name:
                raise ConfigError("retry", f"{part.strip()!r} is not name=value")
            values[name.strip()] = _parse_field(name.strip(), raw.strip())
        return cls.from_values(values)

    def backoff_ceiling(self, retry: int) -> float:
        """The longest wait before retry number `retry` (1 = the first retry)."""
        return grow(self.initial_backoff, self.multiplier, self.max_backoff, retry - 1)


def _parse_field(name: str, raw: str) -> Any:
    """A text value read as the named field's type."""
    if name == "retryable_codes":
        return raw.upper()
    try:
        return int(raw) if name in ("max_attempts", "budget_min_per_second") else float(raw)
    except ValueError:
        raise ConfigError(f"retry.{name}", f"{raw!r} is not a number") from None


def _check_number(value: object, name: str, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"retry.{name}", f"must be a finite number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"retry.{name}", f"must be >= {minimum:g}")


def _check_int(value: object, name: str, minimum: int, maximum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"retry.{name}", f"must be an integer, got {value!r}")
    if not minimum <= value <= maximum:
        raise ConfigError(f"retry.{name}", f"must be in [{minimum}, {maximum}]")


class RetryBudget:
    """Finagle's RetryBudget: retries ≤ ratio x requests + min_per_second x ttl, over `ttl`.

    Every request deposits; a retry withdraws, and is allowed only while the balance (deposits and
    withdrawals of the last `ttl` seconds, plus a reserve of min_per_second x ttl retries) covers
    it. Thread-safe: one short lock per deposit or withdrawal.
    """

    __slots__ = (
        "_clock",
        "_deposit",
        "_head",
        "_lock",
        "_reserve",
        "_slice",
        "_slices",
        "_sum",
        "_withdrawal",
    )

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_second: int = 10,
        ttl: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._deposit = _SCALE if ratio > 0 else 0
        self._withdrawal = int(_SCALE / ratio) if ratio > 0 else 1
        self._reserve = int(min_per_second * ttl * self._withdrawal)
        self._slice = ttl / _SLICES
        self._clock = clock
        self._lock = threading.Lock()
        self._slices = [0] * _SLICES
        self._sum = 0
        self._head = math.floor(clock() / self._slice)

    @classmethod
    def of(cls, policy: RetryPolicy, clock: Callable[[], float] = time.monotonic) -> RetryBudget:
        """The budget a policy describes."""
        per_second = policy.budget_min_per_second
        return cls(policy.budget_ratio, per_second, policy.budget_ttl, clock=clock)

    def deposit(self) -> None:
        """Count one request (a first attempt)."""
        if self._deposit:
            with self._lock:
                self._advance()
                self._add(self._deposit)

    def try_withdraw(self) -> bool:
        """Take one retry from the budget if it covers one; whether it did."""
        with self._lock:
            self._advance()
            if self._sum + self._reserve < self._withdrawal:
                return False
            self._add(-self._withdrawal)
            return True

    @property
    def balance(self) -> int:
        """How many retries the budget allows now."""
        with self._lock:
            self._advance()
            return max(0, (self._sum + self._reserve) // self._withdrawal)

    def _add(self, amount: int) -> None:
        self._slices[self._head % _SLICES] += amount
        self._sum += amount

    def _advance(self) -> None:
        """Drop the slices older than ttl (lock held)."""
        head = math.floor(self._clock() / self._slice)
        gone = head - self._head
        if gone <= 0:
            return
        slices = self._slices
        if gone >= _SLICES:
            slices[:] = [0] * _SLICES
            self._sum = 0
        else:
            for index in range(self._head + 1, head + 1):
                self._sum -= slices[index % _SLICES]
                slices[index % _SLICES] = 0
        self._head = head


# What parse_pushback answers for a pushback that forbids retrying.
NO_RETRY: Final = -1.0


def parse_pushback(values: list[str]) -> float | None:
    """The server's `grpc-retry-pushback-ms` values as seconds; None if absent; NO_RETRY if it
    says not to retry (negative, not an integer, or more than one value, as gRFC A6 reads it)."""
    if not values:
        return None
    if len(values) > 1:
        return NO_RETRY
    text = values[0].strip()
    if not text or len(text) > 12 or not text.isdigit() or not text.isascii():
        return NO_RETRY  # negative ("-1") and garbage alike
    milliseconds = int(text)
    return NO_RETRY if milliseconds > _MAX_PUSHBACK_MS else milliseconds / 1000.0


class RetryRun:
    """The retries of one call: attempt count, backoff and the shared deadline.

    `deadline` is the caller's, on the run's clock (None = none): every attempt shares it, and no
    retry starts that could not begin before it. Once `commit()`ed (gRFC A6: the request can no
    longer be sent again), the run retries no more.
    """

    __slots__ = (
        "_backoff_step",
        "_budget",
        "_rng",
        "attempts",
        "committed",
        "deadline",
        "idempotent",
        "policy",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        *,
        idempotent: bool,
        deadline: float | None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._budget = budget
        self.idempotent = idempotent
        self.deadline = deadline
        self._rng = rng
        self.attempts = 1
        self.committed = False
        self._backoff_step = 1
        budget.deposit()

    def commit(self) -> None:
        """No further attempt: the one in flight (or the last) is the call's answer."""
        self.committed = True

    def next_delay(
        self, code: str, *, sent: bool, pushback: float | None, now: float
    ) -> float | None:
        """Seconds to wait before the next attempt after one that ended with `code`; None = stop.

        `sent`: the request may have reached the server (only idempotent calls are retried
        then); `pushback`: parse_pushback() of the server's answer.
        """
        policy = self.policy
        if self.committed or self.attempts >= policy.max_attempts:
            return None
        if code not in policy.retryable_codes:
            return None
        if sent and not self.idempotent:
            return None
        if pushback is None:
            delay = self._rng() * policy.backoff_ceiling(self._backoff_step)
            self._backoff_step += 1
        elif pushback < 0:
            return None
        else:
            delay = pushback
            self._backoff_step = 1  # the server set the pace: the backoff starts over
        if self.deadline is not None and now + delay >= self.deadline:
            return None
        if not self._budget.try_withdraw():
            return None
        self.attempts += 1
        return delay
