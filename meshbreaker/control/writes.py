"""Store writes for the servicer: one at a time, on one thread, answered once visible here.

A write runs on the store thread so a store's fsync or round trip never blocks the event loop;
writes are serialized by a lock and run to completion even when the client gives up; and a write
answers only once the replica's own change feed has brought its revision back (read-your-writes:
what a client reads next from this replica includes it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from meshbreaker.control.store import (
    AuditEntry,
    PolicyNotFoundError,
    PolicyStore,
    RevisionMismatchError,
    SelectorConflictError,
    StoreError,
    StoreUnavailableError,
)
from meshbreaker.control.validate import Refused
from meshbreaker.v1 import control_plane_pb2 as pb

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Seconds a write waits to see its own revision on the change feed before it answers anyway.
WRITE_VISIBLE_WAIT = 10.0


class StoreWriter:
    """Serialized, cancellation-proof writes to a PolicyStore (call it on the server's loop)."""

    def __init__(self, store: PolicyStore) -> None:
        self._store = store
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="meshbreaker-store")
        self._lock = asyncio.Lock()
        self._writes: set[asyncio.Future[Any]] = set()
        self._seen = 0  # the newest revision the feed brought to this replica
        # Writes waiting to see their revision: (revision, resolved True when seen, False after
        # WRITE_VISIBLE_WAIT).
        self._waiting: list[tuple[int, asyncio.Future[bool]]] = []

    def caught_up(self, revision: int) -> None:
        """The feed has brought `revision`: release the writes waiting for it, at once.

        Their futures are resolved here, so each write's answer is the next thing its task
        does, ahead of the pushes to watchers the same change wakes after this.
        """
        self._seen = max(self._seen, revision)
        waiting = []
        for wanted, seen in self._waiting:
            if wanted <= self._seen and not seen.done():
                seen.set_result(True)
            elif not seen.done():
                waiting.append((wanted, seen))
        self._waiting = waiting

    async def drain(self) -> None:
        """Wait for writes in progress (their clients may be gone) to finish."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def close(self) -> None:
        """Stop the store thread (after drain())."""
        self._executor.shutdown(wait=True)

    async def put(
        self, policies: Sequence[pb.Policy], expected: int | None, actor: str
    ) -> list[AuditEntry]:
        """Store `policies`; returns once this replica has applied them."""
        entries = await self._write(
            self._store.put, policies, expected_revision=expected, actor=actor
        )
        await self._visible(entries[0].revision)
        return entries

    async def delete(self, policy_id: str, expected: int | None, actor: str) -> AuditEntry:
        """Delete a stored policy; returns once this replica has applied the deletion."""
        entry = await self._write(
            self._store.delete, policy_id, expected_revision=expected, actor=actor
        )
        await self._visible(entry.revision)
        return entry

    async def serialized(self, work: Callable[[], Awaitable[_T]]) -> _T:
        """Run `work` under the write lock, to completion even if the calling RPC is cancelled.

        A write the store committed must also reach this replica's copy and its watchers; a
        client that gives up mid-write (deadline, cancel) must not leave the two apart.
        """

        async def locked() -> _T:
            async with self._lock:
                return await work()

        task = asyncio.ensure_future(locked())
        self._writes.add(task)
        task.add_done_callback(self._done)
        return await asyncio.shield(task)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here so an abandoned write's refusal is not reported as unhandled.
            logger.debug("write finished with %r", task.exception())

    async def _visible(self, revision: int) -> None:
        if self._seen >= revision:
            return
        loop = asyncio.get_running_loop()
        seen: asyncio.Future[bool] = loop.create_future()
        self._waiting.append((revision, seen))
        timer = loop.call_later(WRITE_VISIBLE_WAIT, _give_up, seen)
        try:
            if not await seen:
                # Committed all the same; the feed will bring it when the store answers again.
                logger.warning("revision %d written but not seen on the change feed yet", revision)
        finally:
            timer.cancel()

    async def _write(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a store write on the store thread; a store refusal becomes a status code."""
        call = functools.partial(fn, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except RevisionMismatchError as error:
            raise Refused(grpc.StatusCode.ABORTED, str(error)) from None
        except SelectorConflictError as error:
            raise Refused(grpc.StatusCode.ALREADY_EXISTS, str(error)) from None
        except PolicyNotFoundError as error:
            raise Refused(grpc.StatusCode.NOT_FOUND, str(error)) from None
        except StoreUnavailableError as error:
            # Nothing applied here; the policies in force stay. The client may retry.
            raise Refused(
                grpc.StatusCode.UNAVAILABLE, f"policy store unavailable, try again: {error}"
            ) from None
        except StoreError as error:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, str(error)) from None
        except Exception as error:  # disk full, I/O error...: nothing was committed
            logger.exception("policy store write failed")
            raise Refused(
                grpc.StatusCode.UNAVAILABLE, f"policy store write failed: {error}"
            ) from None


def _give_up(seen: asyncio.Future[bool]) -> None:
    if not seen.done():
        seen.set_result(False)
