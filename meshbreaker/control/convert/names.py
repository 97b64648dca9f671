"""Names in control-plane messages: policy ids, caller services, override reasons.

The method and service grammar is `meshbreaker._names`'; it is re-exported here for the server's
request checks.
"""

from __future__ import annotations

import re

from meshbreaker._names import MAX_NAME_LENGTH as MAX_NAME_LENGTH
from meshbreaker._names import check_method as check_method
from meshbreaker._names import check_service as check_service
from meshbreaker.errors import ConfigError

MAX_REASON_LENGTH = 256
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CALLER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def check_policy_id(value: str, path: str = "policy.id") -> str:
    """Validate a policy id; raises ConfigError naming `path`."""
    if not value:
        raise ConfigError(path, "must not be empty")
    if not _ID_RE.fullmatch(value):
        raise ConfigError(
            path, f"{value!r} must be 1..128 of [A-Za-z0-9._-], starting with a letter or digit"
        )
    return value


def check_caller(value: str, path: str, *, required: bool) -> str:
    """Validate a caller (mesh) service name like "transaction"; empty allowed unless required."""
    if not value:
        if required:
            raise ConfigError(path, "must not be empty")
        return value
    if not _CALLER_RE.fullmatch(value):
        raise ConfigError(
            path, f"{value!r} must be 1..128 of [A-Za-z0-9._:-], starting with a letter or digit"
        )
    return value


def check_reason(reason: str, path: str) -> str:
    """An override's reason: at most MAX_REASON_LENGTH printable characters."""
    if len(reason) > MAX_REASON_LENGTH:
        raise ConfigError(path, f"at most {MAX_REASON_LENGTH} characters")
    if not reason.isprintable():
        raise ConfigError(path, "must be printable text (no control characters)")
    return reason
