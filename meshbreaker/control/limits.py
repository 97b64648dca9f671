"""The control plane's size bounds, one frozen object shared by its validation and its state."""

from __future__ import annotations

from dataclasses import dataclass

from meshbreaker.errors import ConfigError


@dataclass(frozen=True)
class Limits:
    """Size bounds; requests beyond them fail with a clear error instead of exhausting memory."""

    max_policies_per_put: int = 100
    max_policies: int = 10_000
    max_breakers_per_report: int = 2_000
    max_transitions_per_report: int = 1_000
    max_instances: int = 100_000
    max_instances_per_service: int = 10_000
    max_breakers_per_instance: int = 10_000  # what one instance holds, partial reports merged
    max_reported_breakers: int = 250_000  # across every instance this replica holds
    max_message_bytes: int = 4 * 1024 * 1024
    event_queue_size: int = 1_000
    event_history: int = 1_000  # recent events kept for ListEvents (`meshbreaker events`)

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"limits.{name}", "must be an integer >= 1")
