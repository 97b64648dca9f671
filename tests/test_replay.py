"""ReplayBuffer (gRFC A6): what each attempt of a client-streaming call reads; when it commits."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from meshbreaker._adapter.replay import PER_RPC_BUFFER_LIMIT, ReplayBuffer, message_size
from meshbreaker.retry import RetryBudget, RetryPolicy, RetryRun


def run() -> RetryRun:
    return RetryRun(RetryPolicy(), RetryBudget(), idempotent=True, deadline=None)


def may_retry(retries: RetryRun) -> bool:
    return retries.next_delay("UNAVAILABLE", sent=True, pushback=0.0, now=0.0) is not None


def test_a_retry_reads_every_message_kept_then_the_rest() -> None:
    retries = run()
    buffer = ReplayBuffer(iter([b"a", b"b", b"c"]), retries)
    first = buffer.attempt()
    assert [next(first), next(first)] == [b"a", b"b"]  # then the attempt failed
    assert may_retry(retries)
    assert list(buffer.attempt()) == [b"a", b"b", b"c"]
    assert list(first) == []  # an attempt that is over reads no more
    assert may_retry(retries)
    assert list(buffer.attempt()) == [b"a", b"b", b"c"]
    assert not may_retry(retries)  # max_attempts=3


def test_past_the_limit_the_call_commits_and_keeps_nothing_read() -> None:
    retries = run()
    buffer = ReplayBuffer(iter([b"12345", b"678", b"9"]), retries, limit=7)
    attempt = buffer.attempt()
    assert next(attempt) == b"12345" and not retries.committed  # 5 bytes kept
    assert next(attempt) == b"678" and retries.committed  # 8 > 7
    assert buffer._kept == []  # read by the attempt in flight, and no retry will come
    assert list(attempt) == [b"9"] and buffer._kept == []
    assert not may_retry(retries)


def test_a_message_of_unknown_size_commits() -> None:
    retries = run()
    first, _unknown = ReplayBuffer(iter([b"a", object()]), retries).attempt()
    assert first == b"a"
    assert retries.committed


def test_sizes_are_serialized_sizes() -> None:
    class Message:
        def ByteSize(self) -> int:
            return 42

    assert PER_RPC_BUFFER_LIMIT == 256 * 1024  # gRFC A6's default
    assert [message_size(m) for m in (b"abc", bytearray(2), memoryview(b"abcd"))] == [3, 2, 4]
    assert message_size(Message()) == 42
    assert message_size("text") is None  # no serializer known here: unknown


def failing(error: Exception) -> Iterator[bytes]:
    yield b"a"
    raise error


def test_a_raising_iterator_commits_and_every_attempt_meets_its_error() -> None:
    retries = run()
    buffer = ReplayBuffer(failing(ValueError("the caller's bug")), retries)
    attempt = buffer.attempt()
    assert next(attempt) == b"a"  # then the attempt failed, and a retry was granted
    assert may_retry(retries)
    with pytest.raises(ValueError):  # grpc's request thread of the failed attempt reads on
        next(attempt)
    assert retries.committed and not may_retry(retries)
    again = buffer.attempt()
    assert next(again) == b"a"
    with pytest.raises(ValueError):  # never part of the stream sent as if it were all of it
        next(again)


def test_a_message_an_ended_attempt_was_waiting_for_goes_to_the_next() -> None:
    retries, go, taken = run(), threading.Event(), threading.Event()

    def slow() -> Iterator[bytes]:
        yield b"a"
        taken.set()
        go.wait(30)
        yield b"b"

    buffer = ReplayBuffer(slow(), retries)
    first = buffer.attempt()
    assert next(first) == b"a"
    late: list[Any] = []
    reader = threading.Thread(target=lambda: late.append(next(first, None)))
    reader.start()  # grpc's request thread of an attempt that fails meanwhile
    assert taken.wait(30)
    assert may_retry(retries)
    second = buffer.attempt()  # starts at once: the caller's iterator is not held
    go.set()
    reader.join(30)
    assert late == [b"b"]  # the ended attempt took it (grpc drops it)...
    assert list(second) == [b"a", b"b"]  # ...and the next attempt still sends it


async def test_aio_attempts_replay_an_async_iterator() -> None:
    async def requests() -> AsyncIterator[bytes]:
        for message in (b"a", b"b", b"c"):
            yield message

    retries = run()
    buffer = ReplayBuffer(requests(), retries)
    first = buffer.attempt_async()
    assert await first.__anext__() == b"a"
    assert may_retry(retries)
    assert [message async for message in buffer.attempt_async()] == [b"a", b"b", b"c"]
    assert [message async for message in first] == []


async def test_aio_attempts_replay_a_plain_iterable() -> None:
    retries = run()
    buffer = ReplayBuffer([b"a", b"b"], retries)
    first = buffer.attempt_async()
    assert await first.__anext__() == b"a"
    assert may_retry(retries)
    assert [message async for message in buffer.attempt_async()] == [b"a", b"b"]


async def test_aio_a_raising_iterator_commits() -> None:
    async def requests() -> AsyncIterator[bytes]:
        yield b"a"
        raise ValueError("the caller's bug")

    retries = run()
    buffer = ReplayBuffer(requests(), retries)
    with pytest.raises(ValueError):
        [message async for message in buffer.attempt_async()]
    assert retries.committed and not may_retry(retries)


@pytest.mark.parametrize("read_on", [False, True], ids=["retry-reads-the-rest", "first-reads-on"])
def test_a_commit_after_the_retry_was_granted_still_replays_in_full(read_on: bool) -> None:
    retries = run()
    buffer = ReplayBuffer(iter([b"1234", b"5678", b"9"]), retries, limit=7)
    first = buffer.attempt()
    assert next(first) == b"1234"  # then the attempt failed, and a retry was granted
    assert may_retry(retries)
    assert next(first) == b"5678" and retries.committed  # its request thread read on: 8 > 7
    if read_on:
        assert next(first) == b"9"  # and on again, committed, before the retry started
    assert list(buffer.attempt()) == [b"1234", b"5678", b"9"]  # kept for the granted retry
    assert buffer._kept == [] and not may_retry(retries)


def test_the_callers_iterator_is_not_asked_again_once_it_has_ended() -> None:
    # Retries replay what was kept: an iterator that has ended is over for every attempt.
    class Counted:
        def __init__(self, messages: list[bytes]) -> None:
            self.messages = iter(messages)
            self.asked = 0

        def __iter__(self) -> Counted:
            return self

        def __next__(self) -> bytes:
            self.asked += 1
            return next(self.messages)

    retries, source = run(), Counted([b"a", b"b"])
    buffer = ReplayBuffer(source, retries)
    assert list(buffer.attempt()) == [b"a", b"b"]
    assert source.asked == 3  # two messages and the end
    assert may_retry(retries)
    assert list(buffer.attempt()) == [b"a", b"b"]
    assert source.asked == 3
