"""Who may call what: the admin token, client tokens, and a brake on guessing.

Admin RPCs (Configure and the client registry) need the operator's admin
token; with none configured they are refused: secure by default. Data-plane
RPCs are open until the first client is defined; from then on they need a
client token (or the admin token). Wrong tokens are answered without touching
the upstream, compared in constant time, logged, and counted per peer.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable

from ..accounts import Accounts, AuthFailureLimiter, ClientRecord, peer_host
from ..errors import GatewayError, Reason

log = logging.getLogger("gpt_grpc.auth")

BEARER = "bearer "
Metadata = Iterable[tuple[str, str | bytes]] | None


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

    def __init__(self, client: ClientRecord | None = None, admin: bool = False) -> None:
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
        # Counted per host (the limiter drops the port): reconnecting does not reset it.
        self.failures.failed(peer)
        log.warning("authentication failed from %s: %s", peer_host(peer), err.reason.value)
        return err

    def admin_call(self, metadata: Metadata, peer: str) -> Caller:
        self.failures.check(peer)
        try:
            self.admin.check(metadata)
        except GatewayError as err:
            if err.reason is Reason.ADMIN_DISABLED:
                raise
            raise self._refuse(peer, err) from None
        return Caller(admin=True)

    def data_call(self, metadata: Metadata, peer: str) -> Caller:
        if not self.accounts.enabled:
            return OPEN
        self.failures.check(peer)
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
        client = self.accounts.authenticate(token)
        if client is None:
            raise self._refuse(peer, GatewayError(Reason.CLIENT_TOKEN_INVALID, "client token rejected"))
        return Caller(client=client)
