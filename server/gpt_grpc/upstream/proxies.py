"""The system's HTTP proxies, for the upstream pool.

`urllib.request.getproxies()` reads the environment (HTTP_PROXY and friends) and, where none is
set, macOS's System Configuration and Windows's Internet Settings, as httpx does; its exceptions
(no_proxy, the system's bypass list) come from `urllib.request.proxy_bypass`. A request that a
proxy applies to goes through httpx2's own transport, which speaks to proxies (CONNECT for
https); every other request stays on the gateway's pool.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable

import httpx2

__all__ = ["ProxyRouter", "system_proxies"]

_SCHEMES = ("http", "https", "all")
_MAX_DECISIONS = 256  # (scheme, host, port) decisions cached: upstream endpoints are the operator's, so few


def system_proxies() -> dict[str, str]:
    """Proxy URL per scheme ("http", "https", "all"), as the system is configured now."""
    found = urllib.request.getproxies()
    return {scheme: url if "://" in url else f"http://{url}" for scheme in _SCHEMES if (url := found.get(scheme, ""))}


class ProxyRouter(httpx2.AsyncBaseTransport):
    """`direct` for requests no proxy applies to; a proxying httpx2 transport for the others."""

    def __init__(
        self,
        direct: httpx2.AsyncBaseTransport,
        proxies: dict[str, str],
        proxied: Callable[[str], httpx2.AsyncBaseTransport],
    ) -> None:
        self._direct = direct
        self._proxies = proxies
        self._make_proxied = proxied
        self._through: dict[str, httpx2.AsyncBaseTransport] = {}
        self._decisions: dict[tuple[str, str, int | None], str | None] = {}

    def proxy_for(self, url: httpx2.URL) -> str | None:
        key = (url.scheme, url.host, url.port)
        if key in self._decisions:
            return self._decisions[key]
        proxy = self._proxies.get(url.scheme) or self._proxies.get("all")
        if proxy is not None and urllib.request.proxy_bypass(url.host):
            proxy = None
        if len(self._decisions) >= _MAX_DECISIONS:
            self._decisions.clear()
        self._decisions[key] = proxy
        return proxy

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        proxy = self.proxy_for(request.url)
        if proxy is None:
            return await self._direct.handle_async_request(request)
        transport = self._through.get(proxy)
        if transport is None:
            transport = self._through[proxy] = self._make_proxied(proxy)
        return await transport.handle_async_request(request)

    @property
    def _pool(self) -> object:
        """The direct pool's summary (the debug aid in server/app.py reads `_pool`)."""
        return getattr(self._direct, "_pool", None)

    async def aclose(self) -> None:
        await self._direct.aclose()
        for transport in self._through.values():
            await transport.aclose()
