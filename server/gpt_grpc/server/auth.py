"""Who may call what: the admin token, client tokens, and a brake on guessing.

Admin RPCs (Configure and the client registry) need the operator's admin
token; with none configured they are refused: secure by default. Data-plane
RPCs are open until the first client is defined; from then on they need a
client token (or the admin token). Wrong tokens are answered without touching
the upstream, compared in constant time, logged, and counted per source.

The brake (AuthFailureLimiter) only slows failures: a token that verifies is
never refused by it, so a host behind NAT or a proxy, or a revoked client
stuck in a retry loop, cannot lock the valid callers of that host out.
Failures are counted per source host, IPv6 sources per /64 (one host can
rotate through a whole /64).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from urllib.parse import unquote

from ..accounts import Accounts
from ..errors import GatewayError, Reason
from ..store.base import ClientRow

log = logging.getLogger("gpt_grpc.auth")

BEARER = "bearer "
Metadata = Iterable[tuple[str, str | bytes]] | None
# IPv6 sources are grouped by this prefix: a host usually holds a whole /64.
IPV6_GROUP_PREFIX = 64

_PEER_PORT = re.compile(r"(ipv4:[^:]+|ipv6:(?:\[[^\]]*\]|%5B.*%5D)):\d+", re.IGNORECASE)


def peer_host(peer: str) -> str:
    """The source a gRPC peer string is counted under: the host without the port, an IPv6 host's /64.

    "ipv4:1.2.3.4:5678" -> "ipv4:1.2.3.4"; "ipv6:[2001:db8::1]:5678" (or
    "ipv6:%5B2001:db8::1%5D:5678") -> "ipv6:2001:db8::/64". A new connection
    (a new port) or a new address of the same /64 must not reset the count.
    """
    match = _PEER_PORT.fullmatch(peer)
    if not match:
        return peer
    host = match.group(1)
    if not host.lower().startswith("ipv6:"):
        return host
    address = unquote(host[5:]).strip("[]")
    try:
        ip = ipaddress.IPv6Address(address.split("%", 1)[0])  # drop a zone id ("fe80::1%eth0")
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return f"ipv4:{ip.ipv4_mapped}"
    network = ipaddress.IPv6Network((ip, IPV6_GROUP_PREFIX), strict=False)
    return f"ipv6:{network}"


class AuthFailureLimiter:
    """Slows sources (by host, IPv6 by /64) that failed authentication too often in a sliding window."""

    def __init__(
        self,
        max_failures: int = 10,
        window_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_peers: int = 10_000,
    ) -> None:
        if max_failures < 1 or window_seconds <= 0 or max_peers < 1:
            raise ValueError("max_failures, window_seconds and max_peers must be positive")
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.max_peers = max_peers
        self._clock = clock
        self._lock = threading.Lock()
        # source -> times of its recent failures (the last max_failures), least recently failed first.
        self._peers: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, peer: str) -> None:
        """Raise AUTH_RATE_LIMITED when `peer`'s source failed max_failures times within the window.

        Called only for a credential that did not verify: a valid one is never braked.
        """
        host = peer_host(peer)
        now = self._clock()
        with self._lock:
            failures = self._peers.get(host)
            if failures is None:
                return
            horizon = now - self.window_seconds
            while failures and failures[0] <= horizon:
                failures.popleft()
            if not failures:
                del self._peers[host]
                return
            if len(failures) >= self.max_failures:
                retry_after = min(max(failures[0] - horizon, 0.001), self.window_seconds)
                raise GatewayError(
                    Reason.AUTH_RATE_LIMITED,
                    f"too many failed authentications from this peer; retry in {retry_after:.0f}s",
                    retry_after=retry_after,
                )

    def failed(self, peer: str) -> None:
        """Count one failed authentication of `peer`."""
        host = peer_host(peer)
        now = self._clock()
        with self._lock:
            failures = self._peers.get(host)
            if failures is None:
                failures = self._peers[host] = deque(maxlen=self.max_failures)
                while len(self._peers) > self.max_peers:
                    self._peers.popitem(last=False)
            else:
                self._peers.move_to_end(host)
            failures.append(now)

    def __len__(self) -> int:
        """Sources tracked."""
        with self._lock:
            return len(self._peers)


def bearer_token(metadata: Metadata) -> str | None:
    """The token of an `authorization: Bearer <token>` entry, if any."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            if text[: len(BEARER)].lower() == BEARER:
                return text[len(BEARER) :].strip() or None
            return None
    return None


class AdminAuth:
    """The operator's admin token."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def matches(self, token: str | None) -> bool:
        # Constant time: the comparison must not leak how much of a guess matched.
        return bool(token) and self._token is not None and hmac.compare_digest(token.encode(), self._token)  # type: ignore[union-attr]

    def check(self, metadata: Metadata) -> None:
        if self._token is None:
            raise GatewayError(
                Reason.ADMIN_DISABLED,
                "admin calls are disabled: the server has no admin token (set GPT_GRPC_ADMIN_TOKEN)",
            )
        token = bearer_token(metadata)
        if not token:
            raise GatewayError(Reason.ADMIN_TOKEN_MISSING, "admin token required: send 'authorization: Bearer <token>'")
        if not self.matches(token):
            raise GatewayError(Reason.ADMIN_TOKEN_INVALID, "admin token rejected")


class Caller:
    """Who a call comes from, once authorized."""

    __slots__ = ("admin", "client")

    def __init__(self, client: ClientRow | None = None, admin: bool = False) -> None:
        self.client = client
        self.admin = admin

    @property
    def name(self) -> str | None:
        return self.client.name if self.client else None


OPEN = Caller()


class Authorizer:
    """Decides, per call, whether it may proceed and as whom."""

    def __init__(self, admin: AdminAuth, accounts: Accounts, failures: AuthFailureLimiter | None = None) -> None:
        self.admin = admin
        self.accounts = accounts
        self.failures = failures or AuthFailureLimiter()

    def _refuse(self, peer: str, err: GatewayError) -> GatewayError:
        # Braked sources get AUTH_RATE_LIMITED instead of the plain refusal; either way
        # the failure counts (per host: reconnecting does not reset it).
        try:
            self.failures.check(peer)
        except GatewayError as braked:
            err = braked
        self.failures.failed(peer)
        log.warning("authentication failed from %s: %s", peer_host(peer), err.reason.value)
        return err

    def admin_call(self, metadata: Metadata, peer: str) -> Caller:
        try:
            self.admin.check(metadata)
        except GatewayError as err:
            if err.reason is Reason.ADMIN_DISABLED:
                raise
            raise self._refuse(peer, err) from None
        return Caller(admin=True)

    async def data_call(self, metadata: Metadata, peer: str) -> Caller:
        if not self.accounts.enabled:
            return OPEN
        token = bearer_token(metadata)
        if not token:
            raise self._refuse(
                peer,
                GatewayError(
                    Reason.CLIENT_TOKEN_MISSING, "a client token is required: 'authorization: Bearer <token>'"
                ),
            )
        if self.admin.matches(token):
            return Caller(admin=True)
        client = await self.accounts.authenticate(token)
        if client is None:
            raise self._refuse(peer, GatewayError(Reason.CLIENT_TOKEN_INVALID, "client token rejected"))
        return Caller(client=client)
