"""A throwaway PostgreSQL server for the tests, run from the binaries the pgserver wheel ships.

initdb is slow (seconds), so its result is kept as a template in pytest's cache, made once under a
file lock shared by the xdist workers; each test session copies it and starts its own server with
fsync off, listening only on a Unix socket in its own directory (no port to collide on). PostgreSQL
refuses to run as root, so under root it runs as `nobody`.
`MESHBREAKER_TEST_POSTGRES_URL` points the tests at a server of your own instead.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EXTERNAL_URL_VARIABLE = "MESHBREAKER_TEST_POSTGRES_URL"
_UNPRIVILEGED = "nobody"


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be had here; the message says why (a test's skip reason)."""


def binaries() -> Path:
    """The directory of PostgreSQL's programs inside the installed pgserver package."""
    for module in ("pgserver", "psycopg"):
        if importlib.util.find_spec(module) is None:
            raise PostgresUnavailable(
                f"the {module} package is not installed (it is in the dev extra: "
                "pip install -e '.[dev]'); no PostgreSQL server to test against"
            )
    spec = importlib.util.find_spec("pgserver")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    if not (path / "initdb").exists():
        raise PostgresUnavailable(f"pgserver ships no PostgreSQL binaries at {path}")
    return path


def _unprivileged() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(_UNPRIVILEGED)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root and there is no {_UNPRIVILEGED!r} user to run PostgreSQL as"
        ) from None


def _run_as() -> dict[str, Any]:
    """subprocess.run() arguments that drop root, which PostgreSQL refuses to run as."""
    if os.geteuid() != 0:
        return {}
    entry = _unprivileged()
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _own(path: Path) -> None:
    """Give `path` (recursively) to the user PostgreSQL runs as."""
    if os.geteuid() != 0:
        return
    entry = _unprivileged()
    for root, dirs, files in os.walk(path):
        for name in (root, *(os.path.join(root, n) for n in (*dirs, *files))):
            os.chown(name, entry.pw_uid, entry.pw_gid)


def _pg(bin_dir: Path, program: str, *args: str, timeout: float = 60) -> None:
    result = subprocess.run(
        [str(bin_dir / program), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **_run_as(),
    )
    if result.returncode != 0:
        raise PostgresUnavailable(
            f"{program} failed ({result.returncode}): {(result.stderr or result.stdout)[-300:]}"
        )


def _template(bin_dir: Path, cache_dir: Path) -> Path:
    """An initialised data directory (made once, under a lock the xdist workers share)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    template = cache_dir / "data"
    with (cache_dir / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (template / "PG_VERSION").exists():
            scratch = Path(tempfile.mkdtemp(prefix="meshbreaker-initdb-"))
            try:
                _own(scratch)
                data = scratch / "data"
                _pg(bin_dir, "initdb", "-D", str(data), "-U", "postgres", "--auth=trust",
                    "--no-sync", "-E", "UTF8", timeout=120)  # fmt: skip
                shutil.rmtree(template, ignore_errors=True)
                shutil.copytree(data, template, symlinks=True)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    return template


@contextmanager
def postgres_server(cache_dir: Path) -> Iterator[str]:
    """A running server's URL (a Unix socket), stopped and deleted on exit."""
    external = os.environ.get(EXTERNAL_URL_VARIABLE)
    if external:
        yield external
        return
    bin_dir = binaries()
    template = _template(bin_dir, cache_dir)
    # /tmp, not pytest's 0700 base directory, which the unprivileged user could not enter.
    home = Path(tempfile.mkdtemp(prefix="meshbreaker-pg-"))
    try:
        data = home / "data"
        shutil.copytree(template, data, symlinks=True)
        data.chmod(0o700)
        _own(home)
        options = f"-F -c listen_addresses= -k {home} -c max_connections=30"
        log = str(home / "log")
        try:
            _pg(bin_dir, "pg_ctl", "-D", str(data), "-l", log, "-o", options, "-w", "-t", "60",
                "start", timeout=90)  # fmt: skip
        except PostgresUnavailable as error:
            tail = (home / "log").read_text()[-300:] if (home / "log").exists() else ""
            raise PostgresUnavailable(f"{error}; server log: {tail}") from None
        try:
            yield f"postgresql://postgres@/postgres?host={home}"
        finally:
            _pg(bin_dir, "pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(home, ignore_errors=True)
