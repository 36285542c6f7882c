"""Opening upstream connections: a small DNS cache, and Happy Eyeballs over its answers.

- `Resolver` caches getaddrinfo's answer per host for a few seconds and lets one lookup run per
  host at a time, so a cold burst of thousands of new connections (10,000 calls arriving at
  once) makes one lookup, not thousands queued on the resolver's thread pool. getaddrinfo gives
  no TTL; `DNS_TTL` (10 s, aiohttp's default) bounds how long a changed record goes unseen, and
  an address that fails to connect drops its host's answer at once.
- `open_connection` races the addresses by RFC 8305 (Happy Eyeballs: the next address starts
  `HAPPY_EYEBALLS_DELAY` after the previous one, families interleaved) with aiohappyeyeballs,
  the implementation asyncio's own `create_connection(happy_eyeballs_delay=...)` and aiohttp
  share. An IPv6 route that drops packets therefore costs 250 ms, not the connect timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import aiohappyeyeballs

__all__ = ["DNS_TTL", "HAPPY_EYEBALLS_DELAY", "Resolver", "open_connection"]

DNS_TTL = 10.0  # seconds an answer is reused
HAPPY_EYEBALLS_DELAY = 0.25  # seconds before the next address is tried (RFC 8305's recommended 250 ms)
_MAX_HOSTS = 256  # cached answers (endpoints are the operator's, so few; bounded all the same)

P = TypeVar("P", bound=asyncio.Protocol)
AddrInfo = tuple[int, int, int, str, tuple[Any, ...]]  # getaddrinfo's (family, type, proto, canonname, sockaddr)


class Resolver:
    """getaddrinfo answers for (host, port), cached `ttl` seconds, one lookup in flight per key."""

    def __init__(self, ttl: float = DNS_TTL) -> None:
        self.ttl = ttl
        self._answers: dict[tuple[str, int], tuple[float, list[AddrInfo]]] = {}
        self._lookups: dict[tuple[str, int], asyncio.Future[list[AddrInfo]]] = {}

    async def resolve(self, host: str, port: int) -> list[AddrInfo]:
        literal = _literal(host, port)
        if literal is not None:
            return literal
        key = (host, port)
        loop = asyncio.get_running_loop()
        cached = self._answers.get(key)
        if cached is not None and cached[0] > loop.time():
            return cached[1]
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = loop.create_task(self._lookup(loop, key))
            self._lookups[key] = lookup
        # Shielded: a caller that gives up (timeout, cancellation) leaves the lookup to the others.
        return await asyncio.shield(lookup)

    async def _lookup(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int]) -> list[AddrInfo]:
        try:
            infos: list[AddrInfo] = list(await loop.getaddrinfo(key[0], key[1], type=socket.SOCK_STREAM))
        finally:
            del self._lookups[key]
        if not infos:
            raise OSError(f"no address for {key[0]}")
        if len(self._answers) >= _MAX_HOSTS:
            self._answers.clear()
        self._answers[key] = (loop.time() + self.ttl, infos)
        return infos

    def forget(self, host: str, port: int) -> None:
        """Drop a cached answer (its addresses failed to connect)."""
        self._answers.pop((host, port), None)


def _literal(host: str, port: int) -> list[AddrInfo] | None:
    """The one address of an IP literal, without a lookup; None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if address.version == 6:
        return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]
    return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]


async def open_connection(
    resolver: Resolver,
    host: str,
    port: int,
    protocol: Callable[[], P],
    tls: ssl.SSLContext | None,
    happy_eyeballs_delay: float = HAPPY_EYEBALLS_DELAY,
) -> P:
    """A connected (and, with `tls`, handshaken) protocol; OSError or ssl.SSLError when none could be made."""
    loop = asyncio.get_running_loop()
    infos = await resolver.resolve(host, port)
    server_hostname = host if tls is not None else None
    if len(infos) == 1:  # nothing to race: the loop's own connect costs a third of the CPU (no Python socket setup)
        family, _, proto, _, address = infos[0]
        try:
            _, connected = await loop.create_connection(
                protocol, address[0], address[1], ssl=tls, server_hostname=server_hostname, family=family, proto=proto
            )
        except OSError:
            resolver.forget(host, port)
            raise
        return connected
    try:
        sock = await aiohappyeyeballs.start_connection(
            infos, happy_eyeballs_delay=happy_eyeballs_delay, interleave=1, loop=loop
        )
    except OSError:
        resolver.forget(host, port)
        raise
    try:
        _, connected = await loop.create_connection(protocol, sock=sock, ssl=tls, server_hostname=server_hostname)
    except BaseException:
        sock.close()
        raise
    return connected
