"""How EtcdStore lays its values out in etcd: endpoints, audit records, counters, key ranges."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshbreaker.control.store.base import AuditEntry
from meshbreaker.v1 import control_plane_pb2 as pb


@dataclass(frozen=True)
class Endpoint:
    """One etcd member's client address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def audit_record(
    revision: int, actor: str, at: float, write_id: str, changes: Sequence[AuditEntry]
) -> bytes:
    """One revision's audit record: JSON, with the policies before and after in base64."""

    def encode(policy: pb.Policy | None) -> str | None:
        return None if policy is None else base64.b64encode(policy.SerializeToString()).decode()

    return json.dumps(
        {
            "revision": revision,
            "actor": actor,
            "time": at,
            "write_id": write_id,
            "changes": [
                {
                    "policy_id": entry.policy_id,
                    "action": entry.action,
                    "before": encode(entry.before),
                    "after": encode(entry.after),
                }
                for entry in changes
            ],
        },
        separators=(",", ":"),
    ).encode()


def audit_entries(value: bytes) -> list[AuditEntry]:
    """The changes an audit record holds."""
    record = json.loads(value)

    def decode(text: str | None) -> pb.Policy | None:
        return None if text is None else pb.Policy.FromString(base64.b64decode(text))

    return [
        AuditEntry(
            int(record["revision"]),
            change["policy_id"],
            change["action"],
            record["actor"],
            float(record["time"]),
            decode(change["before"]),
            decode(change["after"]),
        )
        for change in record["changes"]
    ]


def read_counter(found: Any) -> tuple[int, int]:
    """(version, value) of the store revision key from a transaction read; (0, 0) when unset."""
    if not found:
        return 0, 0
    value, kv = found[0]
    return int(kv.version), int(value)


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix`."""
    return prefix[:-1] + bytes([prefix[-1] + 1])
