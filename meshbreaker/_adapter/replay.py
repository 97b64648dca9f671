"""ReplayBuffer: a client-streaming call's requests, kept so a retry can send them again (gRFC A6).

One buffer serves the sync shell (`attempt()`, an iterator grpc's request thread reads) and the
aio shell (`attempt_async()`, an async iterator grpc.aio's request task reads); what is kept, what
is read and when the call commits is decided here once, under one short lock.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any, Final

from meshbreaker.retry import RetryRun

# gRFC A6's per-RPC retry buffer (grpc.per_rpc_retry_buffer_size, 256 KiB): past it, no retry.
PER_RPC_BUFFER_LIMIT: Final = 256 * 1024

_PULL: Final = object()  # the attempt has read every message kept: take the next from the caller
_END: Final = object()  # no more messages for this attempt


def message_size(message: Any) -> int | None:
    """A request's serialized size in bytes (a protobuf message or bytes); None if unknown."""
    if isinstance(message, (bytes, bytearray)):
        return len(message)
    if isinstance(message, memoryview):
        return message.nbytes
    byte_size = getattr(message, "ByteSize", None)
    if callable(byte_size):
        size = byte_size()
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            return size
    return None


class ReplayBuffer:
    """The requests of one client-streaming call, for every attempt its RetryRun makes.

    Each attempt reads all the messages kept, then takes new ones from the caller's iterator (and
    keeps them). When what is kept passes `limit` bytes, a message's size cannot be known, or the
    caller's iterator raises, the call is committed (gRFC A6): its run retries no more, and from
    then on only what the attempt in flight has not read yet is kept. An attempt whose successor
    has started reads no more (it is over): a message it was already waiting for is kept for the
    successor, so none is lost between attempts. An error the caller's iterator raised is raised
    to every attempt that reads up to it: none sends part of the stream as if it were all.
    """

    __slots__ = (
        "_attempt",
        "_base",
        "_ended",
        "_error",
        "_kept",
        "_limit",
        "_lock",
        "_position",
        "_pull_lock",
        "_pulling",
        "_run",
        "_size",
        "_source",
    )

    def __init__(self, requests: Any, run: RetryRun, limit: int = PER_RPC_BUFFER_LIMIT) -> None:
        self._source: Any = (
            requests.__aiter__() if isinstance(requests, AsyncIterable) else iter(requests)
        )
        self._run = run
        self._limit = limit
        self._lock = threading.Lock()  # the state below; never held while the caller's code runs
        self._pull_lock = threading.Lock()  # sync: one thread reads the caller's iterator at once
        self._pulling: asyncio.Lock | None = None  # aio: one task awaits it at once
        self._kept: list[Any] = []
        self._base = 0  # the index in the call's request stream of _kept[0]
        self._size = 0  # bytes kept while not committed
        self._ended = False  # the caller's iterator is exhausted, or raised _error
        self._error: BaseException | None = None
        self._attempt = 0
        self._position = 0  # how many messages the attempt in flight has read

    def attempt(self) -> Iterator[Any]:
        """The request iterator of the next attempt (sync)."""
        return self._messages(self._start())

    def attempt_async(self) -> AsyncIterator[Any]:
        """The request iterator of the next attempt (aio)."""
        return self._messages_async(self._start())

    def _start(self) -> int:
        with self._lock:
            self._attempt += 1
            self._position = 0
            return self._attempt

    def _messages(self, attempt: int) -> Iterator[Any]:
        while True:
            message = self._take(attempt)
            if message is _PULL:
                with self._pull_lock:
                    message = self._take(attempt)  # another attempt may have read one meanwhile
                    if message is _PULL:
                        message = self._pull(attempt)
            if message is _END:
                return
            yield message

    async def _messages_async(self, attempt: int) -> AsyncIterator[Any]:
        while True:
            message = self._take(attempt)
            if message is _PULL:
                if self._pulling is None:
                    self._pulling = asyncio.Lock()
                async with self._pulling:
                    message = self._take(attempt)  # another attempt may have read one meanwhile
                    if message is _PULL:
                        message = await self._pull_async(attempt)
            if message is _END:
                return
            yield message

    def _pull(self, attempt: int) -> Any:
        """The caller's next message (kept), or _END."""
        try:
            message = next(self._source)
        except StopIteration:
            return self._end(None)
        except BaseException as error:
            self._end(error)
            raise
        return self._keep(attempt, message)

    async def _pull_async(self, attempt: int) -> Any:
        """The caller's next message (kept), or _END; a plain iterable is read as grpc.aio does."""
        if not hasattr(self._source, "__anext__"):
            return self._pull(attempt)
        try:
            message = await self._source.__anext__()
        except StopAsyncIteration:
            return self._end(None)
        except BaseException as error:
            self._end(error)
            raise
        return self._keep(attempt, message)

    def _take(self, attempt: int) -> Any:
        """The next message kept for `attempt`, _PULL or _END."""
        with self._lock:
            if attempt != self._attempt:
                return _END  # a later attempt has started: this one is over
            index = self._position - self._base
            if index < 0:  # committed between the retry's grant and its start: cannot replay
                raise RuntimeError("meshbreaker: this retry's requests were no longer kept")
            if index < len(self._kept):
                message = self._kept[index]
                self._position += 1
                if self._run.committed and self._live(attempt):
                    self._forget()
                return message
            if self._error is not None:
                raise self._error
            return _END if self._ended else _PULL

    def _keep(self, attempt: int, message: Any) -> Any:
        """Keep `message`, just taken from the caller by `attempt`; returns it."""
        size = None if self._run.committed else message_size(message)
        with self._lock:
            live = self._live(attempt)
            if attempt == self._attempt:
                self._position += 1
            if not self._run.committed:
                self._kept.append(message)
                self._size += self._limit + 1 if size is None else size
                if self._size > self._limit:
                    self._run.commit()
                    if live:
                        self._forget()
            elif live:
                self._base += 1  # read at once by the attempt in flight: nothing to keep
            else:
                self._kept.append(message)  # for the retry already granted
        return message

    def _end(self, error: BaseException | None) -> Any:
        """The caller's iterator is exhausted, or raised `error` (then the call commits)."""
        with self._lock:
            self._ended = True
            if error is not None:
                self._error = error
                self._run.commit()
        return _END

    def _live(self, attempt: int) -> bool:
        """Whether `attempt` is in flight and no retry of it is granted (lock held).

        Only then may what it has read be forgotten: a granted retry replays from the start.
        """
        return attempt == self._attempt == self._run.attempts

    def _forget(self) -> None:
        """Drop what the attempt in flight has read: no attempt will read it again (lock held)."""
        del self._kept[: self._position - self._base]
        self._base = self._position
