"""What replicas share of their instances, so any replica shows the whole mesh.

Each replica publishes, through its store's presence (records on a lease), one record per
instance it serves and a heartbeat. It never writes per report: a publish runs every `interval`
seconds, sooner (after `URGENT_DELAY`) when an instance came or went, a breaker changed state or a
NACK arrived, and writes only the instances whose reports changed since the last one, in a few
transactions. So the store's load is bounded per agent (at most one record write per interval,
none while an instance's reports do not change) and never grows with calls or reports.

Every replica follows every other replica's records into its instance table's `remote` map,
and publishes the transitions and NACKs they carry on its own event bus, so WatchEvents on any
replica shows the whole mesh. What it shows of an instance elsewhere is at most one report
interval plus one publish interval old.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from meshbreaker.control.instances import Instance, InstanceTable
from meshbreaker.control.store.presence import Presence, PresenceChange, PresenceFeed
from meshbreaker.v1 import control_plane_pb2 as pb
from meshbreaker.v1 import mesh_pb2

logger = logging.getLogger(__name__)

HEARTBEAT = "heartbeat"
INSTANCE = "instance/"
# A record part holds breakers up to about this many bytes, far below etcd's request limit.
PART_BYTES = 256 * 1024
# Seconds between an urgent change (a transition, a NACK, an instance come or gone) and its publish.
URGENT_DELAY = 0.2
# Transitions kept per instance while the store cannot be written; the oldest go first.
MAX_PENDING_TRANSITIONS = 1000


def new_replica_id() -> str:
    """A fresh id for one run of one replica."""
    return uuid.uuid4().hex[:16]


def _instance_name(instance_id: str, part: int) -> str:
    encoded = base64.urlsafe_b64encode(instance_id.encode()).decode().rstrip("=")
    return f"{INSTANCE}{encoded}/{part}"


@dataclass(frozen=True)
class _Shared:
    """What is published of one instance: references to its (never mutated) maps."""

    instance: Instance
    breakers: dict[str, pb.BreakerSnapshot]
    configs: dict[str, pb.BreakerConfig]
    transitions: list[pb.TransitionRecord]
    reported_at: float  # wall clock of the report the breakers come from


def encode_instance(shared: _Shared, generation: int) -> list[bytes]:
    """An instance's record parts: the first with every field, breakers spread over all."""
    instance = shared.instance
    head = pb.ReportStateRequest(
        instance_id=instance.instance_id,
        service=instance.service,
        applied_revision=instance.applied_revision,
        full=True,
        transition_log=shared.transitions,
        applied_store_id=instance.applied_store_id,
    )
    if instance.nack is not None:
        head.nack.CopyFrom(instance.nack)
    if instance.store_mismatch is not None:
        head.store_mismatch.CopyFrom(instance.store_mismatch)
    reports = [head]
    size = head.ByteSize()
    for name in sorted(shared.breakers):
        if size > PART_BYTES:
            reports.append(pb.ReportStateRequest(instance_id=instance.instance_id, full=True))
            size = 0
        breaker = reports[-1].breakers.add()
        breaker.CopyFrom(shared.breakers[name])
        config = shared.configs.get(name)
        if config is not None:
            breaker.config.CopyFrom(config)
        size += breaker.ByteSize()
    records = []
    for part, report in enumerate(reports):
        record = mesh_pb2.ReplicaInstance(
            report=report, part=part, parts=len(reports), generation=generation
        )
        record.reported_at.FromNanoseconds(int(shared.reported_at * 1e9))
        records.append(record.SerializeToString())
    return records


@dataclass
class _Pending:
    """What the next publish must write, gathered on the loop."""

    changed: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    transitions: dict[str, list[pb.TransitionRecord]] = field(default_factory=dict)


class ReplicaMesh:
    """Shares this replica's instances through `presence` and follows the other replicas'.

    Create and use it on the server's loop; `start()` begins publishing and following.
    """

    def __init__(
        self,
        presence: Presence,
        table: InstanceTable,
        publish_event: Callable[[pb.Event], None],
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        interval: float,
    ) -> None:
        self._presence = presence
        self.replica_id = presence.replica_id
        self._table = table
        self._publish_event = publish_event
        self._clock = clock
        self._wall_clock = wall_clock
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._pending = _Pending()
        self._parts: dict[str, int] = {}  # instance id -> parts written
        self._generation = 0
        self._urgent = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # the last publish failed (the store is away)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="meshbreaker-presence")
        self._remote = _RemoteRecords(self.replica_id, table, publish_event, clock, wall_clock)
        self._feed: PresenceFeed | None = None
        self._stopped = threading.Event()
        self._follower = threading.Thread(
            target=self._follow, name="meshbreaker-presence-feed", daemon=True
        )
        table.on_urgent_change = self._urgent.set

    @property
    def replicas(self) -> int:
        """How many replicas this one knows alive, itself included."""
        return 1 + self._remote.replicas

    def note_event(self, event: pb.Event) -> None:
        """A transition or NACK of an instance here: share it with the next (urgent) publish."""
        transition = event.transition if event.HasField("transition") else None
        if transition is not None and transition.instance_id:
            pending = self._pending.transitions.setdefault(transition.instance_id, [])
            pending.append(
                pb.TransitionRecord(
                    sequence=transition.sequence,
                    name=transition.name,
                    from_state=transition.from_state,
                    to_state=transition.to_state,
                )
            )
            del pending[:-MAX_PENDING_TRANSITIONS]
        self._urgent.set()

    def start(self) -> None:
        """Publish and follow from now on."""
        self._task = self._loop.create_task(self._publish_loop())
        self._follower.start()

    async def stop(self) -> None:
        """Stop both, and give the lease back (this replica's records go with it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._stopped.set()
        feed = self._feed
        if feed is not None:
            feed.close()
        await self._loop.run_in_executor(None, self._close)

    def _close(self) -> None:
        self._follower.join(10)
        self._executor.shutdown(wait=True)
        self._presence.close()

    # -- publishing ----------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._urgent.wait(), self._interval)
                await asyncio.sleep(URGENT_DELAY)  # gather what comes with it
            self._urgent.clear()
            try:
                await self._publish_once()
            except Exception as error:  # the store is away: keep everything for the next one
                # One warning per outage; the retries are debug noise.
                log = logger.debug if self._failing else logger.warning
                log("sharing this replica's instances: %s", error)
                self._failing = True
                await asyncio.sleep(min(self._interval, 1.0))
            else:
                if self._failing:
                    logger.info("sharing this replica's instances again")
                self._failing = False

    async def _publish_once(self) -> None:
        table = self._table
        pending = self._pending
        pending.changed |= table.changed
        pending.removed |= table.removed
        table.changed, table.removed = set(), set()
        self._pending = _Pending()
        live = table.local()
        # The wall-clock time of each instance's last report: its breakers' ages are as of then.
        wall_offset = self._wall_clock() - self._clock()
        shared = [
            _Shared(
                live[key],
                live[key].breakers,
                live[key].configs,
                pending.transitions.get(key, []),
                live[key].last_seen + wall_offset,
            )
            for key in pending.changed
            if key in live
        ]
        gone = {key: self._parts.pop(key) for key in pending.removed if key in self._parts}
        self._generation += 1
        heartbeat = mesh_pb2.ReplicaHeartbeat(
            replica_id=self.replica_id, generation=self._generation, instances=len(live)
        )
        heartbeat.as_of.FromNanoseconds(int(self._wall_clock() * 1e9))
        try:
            kept, parts = await self._loop.run_in_executor(
                self._executor, self._write, shared, gone, heartbeat
            )
        except BaseException:
            self._restore(pending, gone)
            raise
        self._parts.update(parts)
        if not kept:  # the lease was lost and the store dropped every record: write them all
            self._restore(pending, gone)
            table.changed |= set(table.local())
            self._urgent.set()

    def _restore(self, pending: _Pending, gone: dict[str, int]) -> None:
        """A publish failed: what it took is written by the next one."""
        self._table.changed |= pending.changed
        self._table.removed |= pending.removed
        self._parts.update(gone)
        for key, records in pending.transitions.items():
            kept = self._pending.transitions.setdefault(key, [])
            kept[:0] = records
            del kept[:-MAX_PENDING_TRANSITIONS]

    def _write(
        self,
        shared: list[_Shared],
        gone: dict[str, int],
        heartbeat: mesh_pb2.ReplicaHeartbeat,
    ) -> tuple[bool, dict[str, int]]:
        """Presence thread: encode the records and write them, the heartbeat last."""
        puts: dict[str, bytes] = {}
        deletes: list[str] = []
        parts: dict[str, int] = {}
        for item in shared:
            key = item.instance.instance_id
            encoded = encode_instance(item, heartbeat.generation)
            for part, value in enumerate(encoded):
                puts[_instance_name(key, part)] = value
            before = self._parts.get(key, 0)
            deletes += [_instance_name(key, part) for part in range(len(encoded), before)]
            parts[key] = len(encoded)
        for key, count in gone.items():
            deletes += [_instance_name(key, part) for part in range(count)]
        puts[HEARTBEAT] = heartbeat.SerializeToString()
        return self._presence.publish(puts, deletes), parts

    # -- following -----------------------------------------------------------------------

    def _follow(self) -> None:
        """Follower thread: decode every other replica's records and hand them to the loop."""
        while not self._stopped.is_set():
            try:
                if self._feed is None:
                    self._feed = self._presence.feed()
                reset, changes = self._feed.next(timeout=0.5)
            except Exception as error:
                logger.warning("following the other replicas: %s", error)
                self._stopped.wait(1.0)
                continue
            if not reset and not changes:
                continue
            decoded = [
                _decode(change) for change in changes if change.replica_id != self.replica_id
            ]
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone
                self._loop.call_soon_threadsafe(
                    self._remote.apply, reset, [item for item in decoded if item is not None]
                )
        if self._feed is not None:
            self._feed.close()


_Decoded = tuple[str, str, mesh_pb2.ReplicaHeartbeat | mesh_pb2.ReplicaInstance | None]


def _decode(change: PresenceChange) -> _Decoded | None:
    """(replica, name, message or None when gone); None for a record that does not parse."""
    try:
        if change.value is None:
            return change.replica_id, change.name, None
        if change.name == HEARTBEAT:
            return (
                change.replica_id,
                change.name,
                mesh_pb2.ReplicaHeartbeat.FromString(change.value),
            )
        if change.name.startswith(INSTANCE):
            message = mesh_pb2.ReplicaInstance.FromString(change.value)
            return change.replica_id, change.name, message
    except Exception as error:  # another version's record: skip it, never fail the feed
        logger.warning("a record of replica %s does not parse: %s", change.replica_id, error)
    return None


class _RemoteRecords:
    """The other replicas' records, assembled into the instance table's `remote` map (loop)."""

    def __init__(
        self,
        replica_id: str,
        table: InstanceTable,
        publish_event: Callable[[pb.Event], None],
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._replica_id = replica_id
        self._table = table
        self._publish_event = publish_event
        self._clock = clock
        self._wall_clock = wall_clock
        self._heartbeats: dict[str, float] = {}  # replica -> local clock time of its as_of
        # (replica, instance record name without part) -> {part: record}
        self._parts: dict[tuple[str, str], dict[int, mesh_pb2.ReplicaInstance]] = {}
        self._instance_ids: dict[tuple[str, str], str] = {}  # the same key -> its instance id

    @property
    def replicas(self) -> int:
        return len(self._heartbeats)

    def _local_time(self, as_of: float) -> float:
        return self._clock() - max(0.0, self._wall_clock() - as_of)

    def apply(self, reset: bool, changes: list[_Decoded]) -> None:
        """Apply a batch of changes; a reset replaces everything known before."""
        if reset:
            self._heartbeats.clear()
            self._parts.clear()
            self._instance_ids.clear()
            self._table.remote.clear()
        touched: set[tuple[str, str]] = set()
        for replica, name, message in changes:
            if name == HEARTBEAT:
                if isinstance(message, mesh_pb2.ReplicaHeartbeat):
                    self._heartbeat(replica, message)
                else:
                    self._heartbeats.pop(replica, None)
                continue
            record, _, part = name.rpartition("/")
            if not part.isdigit():
                continue
            key = (replica, record)
            parts = self._parts.setdefault(key, {})
            if isinstance(message, mesh_pb2.ReplicaInstance):
                parts[int(part)] = message
            else:
                parts.pop(int(part), None)
            touched.add(key)
        for key in touched:
            self._assemble(key, announce=not reset)
        self._table.version += 1

    def _heartbeat(self, replica: str, heartbeat: mesh_pb2.ReplicaHeartbeat) -> None:
        seen = self._local_time(heartbeat.as_of.ToNanoseconds() / 1e9)
        self._heartbeats[replica] = seen
        for (holder, _), instance in self._table.remote.items():
            if holder == replica:
                instance.last_seen = max(instance.last_seen, seen)

    def _assemble(self, key: tuple[str, str], *, announce: bool) -> None:
        replica = key[0]
        parts = self._parts.get(key, {})
        head = parts.get(0)
        if head is None:
            # Every part gone (the instance left, or the replica's lease expired).
            self._parts.pop(key, None)
            self._forget(replica, key)
            return
        if any(
            parts.get(part) is None or parts[part].generation != head.generation
            for part in range(head.parts)
        ):
            return  # a write still arriving: keep showing the last whole one
        report = head.report
        instance_id = report.instance_id
        previous = self._table.remote.get((replica, instance_id))
        breakers: dict[str, pb.BreakerSnapshot] = {}
        configs: dict[str, pb.BreakerConfig] = {}
        for part in range(head.parts):
            for breaker in parts[part].report.breakers:
                if breaker.HasField("config"):
                    configs[breaker.name] = breaker.config
                breakers[breaker.name] = breaker
        last_seen = self._heartbeats.get(replica, self._clock())
        ages_as_of = None
        if head.HasField("reported_at"):
            ages_as_of = min(last_seen, self._local_time(head.reported_at.ToNanoseconds() / 1e9))
        instance = Instance(
            instance_id=instance_id,
            service=report.service,
            last_seen=last_seen,
            ages_as_of=ages_as_of,
            applied_revision=report.applied_revision,
            nack=report.nack if report.HasField("nack") else None,
            breakers=breakers,
            applied_store_id=report.applied_store_id,
            store_mismatch=report.store_mismatch if report.HasField("store_mismatch") else None,
            configs=configs,
            replica=replica,
            last_sequence=previous.last_sequence if previous is not None else 0,
        )
        for record in report.transition_log:
            if record.sequence and record.sequence <= instance.last_sequence:
                continue  # already shown (records are rewritten, transitions are not repeated)
            instance.last_sequence = max(instance.last_sequence, record.sequence)
            if announce:
                self._publish_event(
                    pb.Event(
                        transition=pb.BreakerTransition(
                            instance_id=instance_id,
                            service=report.service,
                            name=record.name,
                            from_state=record.from_state,
                            to_state=record.to_state,
                            sequence=record.sequence,
                        )
                    )
                )
        old_nack = previous.nack if previous is not None else None
        if announce and instance.nack is not None and instance.nack != old_nack:
            self._publish_event(
                pb.Event(
                    nack=pb.ConfigNack(
                        instance_id=instance_id, service=report.service, nack=instance.nack
                    )
                )
            )
        self._table.remote[(replica, instance_id)] = instance
        self._instance_ids[key] = instance_id

    def _forget(self, replica: str, key: tuple[str, str]) -> None:
        instance_id = self._instance_ids.pop(key, None)
        if instance_id is not None:
            self._table.remote.pop((replica, instance_id), None)
