"""Where the gateway keeps clients, limits, usage and settings: see base.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit

from .base import Store, StoreError

SQLITE_SCHEME = "sqlite://"
REDIS_SCHEMES = ("redis", "rediss", "unix")


def store_from_url(url: str | None, *, password: str | None = None, clock: Callable[[], float] = time.time) -> Store:
    """The store named by `url` (not yet opened): None or "memory" is an in-memory SQLite store.

    `sqlite:///var/lib/gpt-grpc/gateway.db` (an absolute path after the
    scheme), `redis://host:6379/0`, `rediss://host:6380/0` (TLS),
    `unix:///run/redis.sock?db=0`. A password may be in the URL
    (`redis://:secret@host:6379/0`) or given apart (`password`).
    """
    from .sqlite import SqliteStore

    if not url or url == "memory":
        return SqliteStore(None, clock=clock)
    if url.startswith(SQLITE_SCHEME):
        path = url[len(SQLITE_SCHEME) :]
        if not path or path in (":memory:", "/:memory:"):
            return SqliteStore(None, clock=clock)
        return SqliteStore(path, clock=clock)
    scheme = urlsplit(url).scheme.lower()
    if scheme in REDIS_SCHEMES:
        from .redis import RedisStore  # the only module that imports redis

        return RedisStore(url, password=password, clock=clock)
    raise StoreError(
        "--store must be sqlite:///path/to/gateway.db, redis://host:port/N or rediss://host:port/N "
        f"(got a URL with scheme {scheme[:16]!r})"
    )


__all__ = ["Store", "StoreError", "store_from_url"]
