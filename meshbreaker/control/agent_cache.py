"""The agent's fail-static cache: the last applied config snapshot on disk, kept so it cannot hurt.

The cache exists to keep an application running while the control plane is away; it must never
be what stops it. Every way a file can be wrong (missing, unreadable, a directory, huge, not
UTF-8, not JSON, nested past the parser's depth, the wrong shapes or types, another service's,
another format) is answered by ignoring it with one warning that names the file, and every
failure to write it by one warning per failure streak.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from meshbreaker.v1 import control_plane_pb2 as pb

logger = logging.getLogger("meshbreaker.control.agent")

CACHE_FORMAT = 1
# A snapshot of a few thousand policies is well under a megabyte; a larger file is not ours.
MAX_CACHE_BYTES = 16 * 1024 * 1024
# How much of a parse error a warning quotes (it may echo the file's contents).
_MAX_REASON = 200


@dataclass(frozen=True)
class CachedSnapshot:
    """What the cache held: the snapshot and the id of the store it came from ("" = unknown)."""

    snapshot: pb.ConfigSnapshot
    store_id: str = ""


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON so a reader (or a crash) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, sort_keys=True, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


class FailStaticCache:
    """The cache file of one agent (`service`): load() and save() never raise."""

    def __init__(self, path: Path, service: str) -> None:
        self.path = path
        self.service = service
        self._save_failing = False

    def load(self) -> CachedSnapshot | None:
        """The cached snapshot, or None (with one warning unless there is no file at all)."""
        try:
            return self._read()
        except FileNotFoundError:
            return None
        except Exception as error:  # whatever a file can do to a parser: ignore it, say so once
            self.warn_ignored(error)
            return None

    def warn_ignored(self, error: BaseException) -> None:
        """The one warning for a cache that cannot be used."""
        reason = f"{type(error).__name__}: {error}" if not isinstance(error, ValueError) else error
        text = " ".join(str(reason).split())
        if len(text) > _MAX_REASON:
            text = text[:_MAX_REASON] + "…"
        logger.warning(
            "meshbreaker agent: ignoring fail-static cache %s (%s); starting without it",
            self.path,
            text,
        )

    def _read(self) -> CachedSnapshot:
        info = self.path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_size > MAX_CACHE_BYTES:
            raise ValueError(f"{info.st_size} bytes, more than a cache ever holds")
        with self.path.open("rb") as handle:
            raw = handle.read(MAX_CACHE_BYTES + 1)
        if len(raw) > MAX_CACHE_BYTES:
            raise ValueError("grew past the size a cache ever holds")
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != CACHE_FORMAT:
            raise ValueError(f"unknown cache format {_short(data.get('format'))}")
        if data.get("service") != self.service:
            raise ValueError(f"written for service {_short(data.get('service'))}")
        store_id = data.get("store_id", "")
        if not isinstance(store_id, str):
            raise ValueError("store_id is not a string")
        body = data.get("snapshot")
        if not isinstance(body, dict):
            raise ValueError("snapshot is not a JSON object")
        snapshot = json_format.ParseDict(body, pb.ConfigSnapshot(), ignore_unknown_fields=True)
        return CachedSnapshot(snapshot, store_id)

    def save(self, snapshot: pb.ConfigSnapshot, store_id: str) -> None:
        """Write the snapshot; a failure is one warning per streak, never an exception."""
        data = {
            "format": CACHE_FORMAT,
            "service": self.service,
            "revision": snapshot.revision,
            "store_id": store_id,
            "snapshot": json_format.MessageToDict(snapshot, preserving_proto_field_name=True),
        }
        try:
            write_json_atomic(self.path, data)
        except Exception as error:  # a full disk, a read-only mount, a directory in the way
            if not self._save_failing:
                logger.warning(
                    "meshbreaker agent: cannot write fail-static cache %s (%s: %s); "
                    "the policies in force are kept in memory only",
                    self.path,
                    type(error).__name__,
                    error,
                )
            self._save_failing = True
        else:
            if self._save_failing:
                logger.info("meshbreaker agent: fail-static cache %s written again", self.path)
            self._save_failing = False


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"
