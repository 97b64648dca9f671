"""The asyncio loop, in one daemon thread, that runs every MeshAgent of the process."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


class AgentLoop:
    """The asyncio loop, in one daemon thread, that runs every MeshAgent of the process."""

    _shared: AgentLoop | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="meshbreaker-agents", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @classmethod
    def shared(cls) -> AgentLoop:
        """The process-wide loop, started on first use."""
        with cls._shared_lock:
            if cls._shared is None or not cls._shared.thread.is_alive():
                cls._shared = cls()
            return cls._shared

    def submit(self, coroutine: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Run `coroutine` on the loop; a concurrent future for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def in_loop(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.current_thread() is self.thread
