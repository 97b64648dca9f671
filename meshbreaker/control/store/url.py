"""Stores named by URL, as `meshbreaker control-plane --store` takes them."""

from __future__ import annotations

from meshbreaker.control.store.base import PolicyStore
from meshbreaker.errors import ConfigError

STORE_URL_FORMS = "sqlite:///PATH or etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"


def parse_etcd_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """(endpoints, prefix) of etcd://HOST:PORT[,HOST:PORT...][/PREFIX]; prefix "/meshbreaker/"."""
    rest = url[len("etcd://") :]
    hosts, slash, path = rest.partition("/")
    endpoints = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        host = host.strip("[]")  # [::1]:2379
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError("store", f"etcd endpoint {item[:100]!r} is not HOST:PORT")
        endpoints.append((host, int(port)))
    prefix = f"/{path.strip('/')}/" if slash and path.strip("/") else "/meshbreaker/"
    return endpoints, prefix


def open_store(url: str) -> PolicyStore:
    """Open the store at `url` (sqlite:///PATH or etcd://...); the caller closes it."""
    if url.startswith("sqlite:///"):
        from meshbreaker.control.store.sqlite import SqliteStore

        # As in SQLAlchemy: sqlite:///relative.db, sqlite:////absolute/path.db.
        path = url[len("sqlite:///") :]
        if not path:
            raise ConfigError("store", f"{url!r} names no file: sqlite:///PATH")
        return SqliteStore(path)
    if url.startswith("etcd://"):
        from meshbreaker.control.store.etcd import EtcdStore

        endpoints, prefix = parse_etcd_url(url)
        return EtcdStore(endpoints, prefix=prefix)
    raise ConfigError("store", f"{url[:200]!r} is not {STORE_URL_FORMS}")
