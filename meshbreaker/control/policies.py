"""The server's copy of the policies, kept in step with the store's change feed, off the loop.

One follower thread reads the feed (every replica's writes, this one's too) and applies each batch
to a `PolicyIndex`: policies by id and by caller, so a change costs work for the callers it
touches and its own size, never all policies times all watchers. It hands the new revision on at
once (a write waiting to see it answers then), and then, for every watched caller the change
touches, builds that caller's new snapshot there, in the follower thread, as wire bytes:
each policy is encoded once, when it is stored, as its own `policies` field of a ConfigSnapshot,
and a caller's snapshot is the header's bytes followed by its policies' bytes in id order (a
protobuf message is the concatenation of its fields, in any order: the bytes equal the message's
own encoding). Joining bytes costs about a seventieth of building the message, so a change to a
policy of every caller stays cheap with a hundred callers watched. The loop only swaps in
finished snapshots and wakes the watchers of those callers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from meshbreaker.control.store import (
    AuditEntry,
    ChangeFeed,
    CompactedError,
    PolicyStore,
    selector_key,
)
from meshbreaker.v1 import control_plane_pb2 as pb

logger = logging.getLogger(__name__)

# Room in a message for what wraps the policies (revision, service, field tags).
SNAPSHOT_OVERHEAD_BYTES = 1024


@dataclass(frozen=True)
class EncodedSnapshot:
    """A caller's ConfigSnapshot as wire bytes, with the revision it carries."""

    revision: int
    service: str
    payload: bytes

    def message(self) -> pb.ConfigSnapshot:
        """The snapshot as a message (parsed from its bytes)."""
        return pb.ConfigSnapshot.FromString(self.payload)


def encode_snapshot(response: EncodedSnapshot | pb.ConfigSnapshot) -> bytes:
    """The serializer of GetConfig and WatchConfig: an encoded snapshot's bytes, as they are."""
    if isinstance(response, EncodedSnapshot):
        return response.payload
    return response.SerializeToString()


@dataclass(frozen=True)
class Update:
    """What one feed batch changed: its entries, the new revision, fresh snapshots per caller."""

    revision: int
    entries: Sequence[AuditEntry]
    snapshots: dict[str, EncodedSnapshot]
    relisted: bool = False  # the history was compacted: the whole state was read again
    # Watched callers whose snapshots these entries changed: they follow in the next Update.
    coming: frozenset[str] = frozenset()


class PolicyIndex:
    """Policies by id and by caller ("" = every caller), with each caller bucket's byte size.

    Guarded by one lock: the follower thread writes, request handlers read snapshots from it.
    """

    def __init__(self, revision: int, policies: Iterable[pb.Policy], *, store_id: str = "") -> None:
        self._lock = threading.Lock()
        self.revision = revision
        self.store_id = store_id
        self._adopted: tuple[str, ...] = ()  # stores whose agents may take this one's
        self._by_id: dict[str, pb.Policy] = {}
        self._by_selector: dict[tuple[str, str, str], pb.Policy] = {}
        self._by_caller: dict[str, dict[str, pb.Policy]] = {}
        # Policy id -> the policy encoded as one `policies` field of a ConfigSnapshot.
        self._encoded: dict[str, bytes] = {}
        self._bytes: dict[str, int] = {}
        self._watched: set[str] = set()
        self._overridden: dict[str, pb.Policy] = {}  # the policies holding an override, by id
        self._canaries: dict[str, pb.Policy] = {}  # the policies with a canary, by id
        for policy in policies:
            self._add(policy)

    def _add(self, policy: pb.Policy) -> None:
        self._by_id[policy.id] = policy
        self._by_selector[selector_key(policy)] = policy
        caller = policy.selector.caller
        self._by_caller.setdefault(caller, {})[policy.id] = policy
        self._encoded[policy.id] = pb.ConfigSnapshot(policies=[policy]).SerializeToString()
        self._bytes[caller] = self._bytes.get(caller, 0) + policy.ByteSize() + 8
        if policy.override != pb.OVERRIDE_NONE:
            self._overridden[policy.id] = policy
        if policy.HasField("canary"):
            self._canaries[policy.id] = policy

    def _remove(self, policy_id: str) -> pb.Policy | None:
        policy = self._by_id.pop(policy_id, None)
        if policy is not None:
            del self._encoded[policy_id]
            self._overridden.pop(policy_id, None)
            self._canaries.pop(policy_id, None)
            self._by_selector.pop(selector_key(policy), None)
            caller = policy.selector.caller
            bucket = self._by_caller[caller]
            del bucket[policy_id]
            self._bytes[caller] -= policy.ByteSize() + 8
            if not bucket:
                del self._by_caller[caller]
                del self._bytes[caller]
        return policy

    def _applicable(self, caller: str) -> list[pb.Policy]:
        # The policies for every caller plus the caller's own: applicable(), without a scan.
        mine = list(self._by_caller.get("", {}).values())
        if caller:
            mine += self._by_caller.get(caller, {}).values()
        return mine

    def _applicable_encoded(self, caller: str) -> list[tuple[str, bytes]]:
        # (id, encoded field) of the policies that apply to `caller`; call it under the lock.
        encoded = self._encoded
        ids = list(self._by_caller.get("", {}))
        if caller:
            ids += self._by_caller.get(caller, {})
        return [(policy_id, encoded[policy_id]) for policy_id in ids]

    def snapshot(self, caller: str) -> EncodedSnapshot:
        """The policies that apply to `caller` now, sorted by id, with the revision."""
        with self._lock:
            revision, mine = self.revision, self._applicable_encoded(caller)
        return self._snapshot(revision, caller, mine)

    def policies(self, caller: str = "") -> list[pb.Policy]:
        """Every policy (or those applying to `caller`), sorted by id."""
        with self._lock:
            found = self._applicable(caller) if caller else list(self._by_id.values())
        return sorted(found, key=lambda policy: policy.id)

    def overrides(self, caller: str = "") -> list[pb.Policy]:
        """The policies holding an override (those applying to `caller`, "" = all), by id."""
        with self._lock:
            found = list(self._overridden.values())
        if caller:
            found = [policy for policy in found if policy.selector.caller in ("", caller)]
        return sorted(found, key=lambda policy: policy.id)

    def canaries(self, caller: str = "") -> list[pb.Policy]:
        """The policies with a canary (those applying to `caller`, "" = all), by id."""
        with self._lock:
            found = list(self._canaries.values())
        if caller:
            found = [policy for policy in found if policy.selector.caller in ("", caller)]
        return sorted(found, key=lambda policy: policy.id)

    def by_selector(self, key: tuple[str, str, str]) -> pb.Policy | None:
        """The policy holding exactly this selector, or None."""
        with self._lock:
            return self._by_selector.get(key)

    def by_id(self, policy_id: str) -> pb.Policy | None:
        """The policy with this id, or None."""
        with self._lock:
            return self._by_id.get(policy_id)

    def has(self, policy_id: str) -> bool:
        """True when a policy has this id."""
        with self._lock:
            return policy_id in self._by_id

    def watch(self, caller: str) -> EncodedSnapshot:
        """Start building snapshots for `caller` on every change; its snapshot now."""
        with self._lock:
            self._watched.add(caller)
            revision, mine = self.revision, self._applicable_encoded(caller)
        return self._snapshot(revision, caller, mine)

    def set_adopted(self, store_ids: tuple[str, ...]) -> dict[str, EncodedSnapshot]:
        """Name the stores an operator adopted; every watched caller's snapshot, renewed."""
        with self._lock:
            self._adopted = store_ids
            revision = self.revision
            lists = {caller: self._applicable_encoded(caller) for caller in self._watched}
        return {caller: self._snapshot(revision, caller, mine) for caller, mine in lists.items()}

    def unwatch(self, caller: str) -> None:
        """No more snapshots for `caller` (its last watcher left)."""
        with self._lock:
            self._watched.discard(caller)

    def apply(self, entries: Sequence[AuditEntry]) -> dict[str, EncodedSnapshot]:
        """Apply whole revisions in order; the new snapshot of every watched caller they touch."""
        return self.snapshots(self.record(entries))

    def record(self, entries: Sequence[AuditEntry]) -> frozenset[str]:
        """Apply whole revisions in order (bookkeeping only); the watched callers they touch."""
        touched: set[str] = set()
        with self._lock:
            start = self.revision
            for entry in entries:
                if entry.revision <= start:
                    continue  # already in (the listing this index started from had it)
                old = self._remove(entry.policy_id)
                if old is not None:
                    touched.add(old.selector.caller)
                if entry.after is not None:
                    self._add(entry.after)
                    touched.add(entry.after.selector.caller)
            self.revision = max(start, entries[-1].revision)
            return frozenset(self._watched if "" in touched else touched & self._watched)

    def snapshots(self, callers: Iterable[str]) -> dict[str, EncodedSnapshot]:
        """The snapshot of each of `callers` now."""
        with self._lock:
            revision = self.revision
            lists = {caller: self._applicable_encoded(caller) for caller in callers}
        # Built outside the lock: readers wait only for the bookkeeping above.
        return {caller: self._snapshot(revision, caller, mine) for caller, mine in lists.items()}

    def replace(self, revision: int, policies: Iterable[pb.Policy]) -> dict[str, EncodedSnapshot]:
        """Start over from a full listing (after a compaction); every watched caller's snapshot."""
        with self._lock:
            self._by_id.clear()
            self._by_selector.clear()
            self._by_caller.clear()
            self._encoded.clear()
            self._bytes.clear()
            self._overridden.clear()
            self._canaries.clear()
            for policy in policies:
                self._add(policy)
            self.revision = revision
            lists = {caller: self._applicable_encoded(caller) for caller in self._watched}
        return {caller: self._snapshot(revision, caller, mine) for caller, mine in lists.items()}

    def largest_snapshot_bytes(self, changes: Sequence[pb.Policy]) -> tuple[str, int]:
        """(caller, approximate bytes) of the largest snapshot `changes` would leave behind."""
        with self._lock:
            sizes = dict(self._bytes)
            for policy in changes:
                old = self._by_id.get(policy.id)
                if old is not None:
                    sizes[old.selector.caller] -= old.ByteSize() + 8
                caller = policy.selector.caller
                sizes[caller] = sizes.get(caller, 0) + policy.ByteSize() + 8
        common = sizes.pop("", 0)
        if not sizes:
            return "", common + SNAPSHOT_OVERHEAD_BYTES
        caller = max(sizes, key=lambda name: sizes[name])
        return caller, common + sizes[caller] + SNAPSHOT_OVERHEAD_BYTES

    def _snapshot(
        self, revision: int, caller: str, policies: list[tuple[str, bytes]]
    ) -> EncodedSnapshot:
        policies.sort()  # by id: ids are unique, so the bytes are never compared
        header = pb.ConfigSnapshot(
            revision=revision,
            service=caller,
            store_id=self.store_id,
            adopted_store_ids=self._adopted,
        ).SerializeToString()
        payload = b"".join([header, *(encoded for _, encoded in policies)])
        return EncodedSnapshot(revision, caller, payload)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_id)


class Follower:
    """A thread that follows the store's feed into a PolicyIndex and hands each Update on."""

    def __init__(
        self,
        store: PolicyStore,
        index: PolicyIndex,
        deliver: Callable[[Update], None],
        *,
        poll: float = 0.5,
    ) -> None:
        self._store = store
        self._index = index
        self._deliver = deliver
        self._poll = poll
        self._stopped = threading.Event()
        self._feed: ChangeFeed | None = None
        self._thread = threading.Thread(
            target=self._run, name="meshbreaker-policy-feed", daemon=True
        )

    def start(self) -> None:
        """Follow from the index's revision on."""
        self._thread.start()

    def stop(self) -> None:
        """Stop following and wait for the thread (closing the feed wakes it at once)."""
        self._stopped.set()
        feed = self._feed
        if feed is not None:
            feed.close()
        self._thread.join(10)

    def _run(self) -> None:
        feed = None
        while not self._stopped.is_set():
            try:
                if feed is None:
                    feed = self._feed = self._store.watch(self._index.revision)
                entries = feed.next(timeout=self._poll)
                if entries:
                    # The revision first, so the writes waiting for it answer without waiting
                    # for the snapshots; then the snapshots of the watched callers it changed.
                    callers = self._index.record(entries)
                    self._deliver(Update(self._index.revision, entries, {}, coming=callers))
                    if callers:
                        snapshots = self._index.snapshots(callers)
                        self._deliver(Update(self._index.revision, (), snapshots))
            except CompactedError as error:
                logger.warning("policy feed: %s", error)
                if feed is not None:
                    feed.close()
                feed = None
                self._relist()
            except Exception as error:  # store away: keep serving what we have, retry
                logger.warning("policy feed: %s; retrying", error)
                if feed is not None:
                    feed.close()
                feed = None
                self._stopped.wait(1.0)
        if feed is not None:
            feed.close()

    def _relist(self) -> None:
        try:
            revision, policies = self._store.list()
        except Exception as error:
            logger.warning("policy feed: re-listing failed: %s; retrying", error)
            self._stopped.wait(1.0)
            return
        snapshots = self._index.replace(revision, policies)
        self._deliver(Update(revision, (), snapshots, relisted=True))
