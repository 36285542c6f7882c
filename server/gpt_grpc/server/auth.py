"""The admin credential that guards Configure: secure by default."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from ..errors import GatewayError, Reason

BEARER = "bearer "


class AdminAuth:
    """Checks `authorization: Bearer <token>` against the operator's admin token.

    With no token configured, every admin call is refused (PERMISSION_DENIED):
    nobody can change where prompts are sent unless the operator opted in.
    """

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        if self._token is None:
            raise GatewayError(
                Reason.ADMIN_DISABLED,
                "admin calls are disabled: the server has no admin token (set GPT_GRPC_ADMIN_TOKEN)",
            )
        presented: bytes | None = None
        for key, value in metadata or ():
            if key == "authorization":
                text = value.decode(errors="replace") if isinstance(value, bytes) else value
                if text[: len(BEARER)].lower() == BEARER:
                    presented = text[len(BEARER) :].strip().encode()
                break
        if not presented:
            raise GatewayError(
                Reason.ADMIN_TOKEN_MISSING, "admin token required: send 'authorization: Bearer <token>'"
            )
        # Constant time: the comparison must not leak how much of a guess matched.
        if not hmac.compare_digest(presented, self._token):
            raise GatewayError(Reason.ADMIN_TOKEN_INVALID, "admin token rejected")
