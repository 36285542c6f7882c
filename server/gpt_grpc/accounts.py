"""Per-client keys: named clients, their tokens, limits and usage, over a store.

An operator defines clients through the admin RPCs. Each gets a bearer token
(shown once, stored as its SHA-256 only), optional limits (limits.py) and
its usage. With no client defined (`Accounts.enabled` is false) the data
plane stays open. Where all of it lives is the store's business (store/):
this process's memory and a SQLite file, or Redis shared by a fleet.

Tokens are `gptk_` + 32 random bytes (urlsafe base64): 256 bits of entropy,
so an unsalted SHA-256 is enough to make the stored value useless to a thief
and cheap to check. Presented tokens are hashed, looked up by hash, and the
stored hash is then compared with `hmac.compare_digest`.

This module knows nothing of gRPC or of any database.
"""

from __future__ import annotations

import builtins
import hashlib
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from .chat import Usage
from .errors import FieldViolation, GatewayError, Reason, invalid
from .limits import Estimate, Limits, Ticket, too_big, validate_limits
from .store.base import ANONYMOUS, Charge, ClientRow, Store
from .usage import ModelTotals

__all__ = ["Accounts", "ClientRecord", "ClientRow", "Limits", "hash_token", "validate_limits", "validate_name"]

TOKEN_PREFIX = "gptk_"
# Characters of the token kept in clear to tell tokens apart ("gptk_AbC").
SHOWN_PREFIX_LENGTH = 8
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# Longer bearer tokens are refused without hashing them (ours are 48 chars).
MAX_TOKEN_LENGTH = 256
# Model names recorded in usage are bounded (chat.validate allows 256; a refused call may carry more).
MAX_MODEL_CHARS = 256


@dataclass(frozen=True)
class ClientRecord:
    """A client as the admin RPCs show it."""

    name: str
    limits: Limits
    created_at: float  # unix seconds
    revoked_at: float | None
    token_prefix: str  # first 8 chars of the token, e.g. "gptk_AbC"
    period_spend_usd: float  # spend in the current budget period (current UTC day if no budget)


def validate_name(name: str) -> list[FieldViolation]:
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        return [FieldViolation("name", "must be 1 to 64 letters, digits, '_', '-' or '.'")]
    return []


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Accounts:
    """The clients, their limits and their usage. See the module docstring."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock

    # ----------------------------------------------------------- admin plane

    @property
    def enabled(self) -> bool:
        """Any client was ever defined (revoked ones too): data-plane calls need a token.

        Revoking the last client must not reopen the gateway to everyone: an
        operator revoking a leaked token expects less access, not more.
        """
        return self.store.has_clients

    async def create(self, name: str, limits: Limits) -> tuple[ClientRecord, str]:
        """Define a client; returns it and its token (shown this once, stored hashed)."""
        violations = validate_name(name) + validate_limits(limits)
        if violations:
            raise invalid(violations)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = ClientRow(
            name=name,
            token_hash=hash_token(token),
            token_prefix=token[:SHOWN_PREFIX_LENGTH],
            limits=limits,
            created_at=self._clock(),
        )
        await self.store.add_client(row)
        return await self._record(row), token

    async def update(self, name: str, limits: Limits) -> ClientRecord:
        """Replace a client's limits (all of them). Revoked clients are not found."""
        violations = validate_limits(limits)
        if violations:
            raise invalid(violations)
        return await self._record(await self.store.set_limits(name, limits))

    async def revoke(self, name: str) -> ClientRecord:
        """Revoke a client's token at once; its usage stays. A revoked client is not found."""
        return await self._record(await self.store.revoke_client(name, self._clock()))

    async def list(self, include_revoked: bool = False) -> builtins.list[ClientRecord]:
        """The clients sorted by name."""
        rows = await self.store.list_clients()
        return [await self._record(r) for r in rows if include_revoked or r.revoked_at is None]

    async def get(self, name: str) -> ClientRecord:
        """One client, revoked or not."""
        return await self._record(await self._known(name))

    async def usage(self, name: str) -> tuple[builtins.list[ModelTotals], ModelTotals, float]:
        """(per model sorted by name, total, since = the client's creation time)."""
        row = await self._known(name)
        models = await self.store.usage(name)
        return models, total_of(models), row.created_at

    async def all_usage(self) -> tuple[builtins.list[ModelTotals], ModelTotals, float]:
        """All traffic as the store counted it: (per model, total, since)."""
        models = await self.store.usage(None)
        return models, total_of(models), self.store.since

    # ------------------------------------------------------------ data plane

    async def authenticate(self, token: str) -> ClientRow | None:
        """The active client holding `token`, or None (unknown or revoked)."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        return await self.store.find_token(hash_token(token))

    async def admit(self, client: ClientRow, estimate: Estimate, *, requests_only: bool = False) -> Ticket | None:
        """Reserve one call of `client`, or raise why not. None: nothing to check, or nothing to settle.

        `requests_only`: a call that costs nothing upstream (CountTokens) is held
        to the request rate alone, not to the token rate, the budget or the
        calls in flight, and is not settled.
        """
        if requests_only:
            if client.limits.requests_per_minute is None:
                return None
            await self.store.admit(client, estimate, requests_only=True)
            return None
        if not client.limits.metered:
            return None
        refusal = too_big(client.limits, estimate)
        if refusal is not None:
            raise refusal
        return await self.store.admit(client, estimate)

    def record(
        self,
        client: str | None,
        model: str,
        usage: Usage | None,
        cost_usd: float | None,
        ok: bool,
        ticket: Ticket | None = None,
    ) -> None:
        """Account one finished call (usage, spend, token window); `client` None: no client token."""
        cost = cost_usd if cost_usd is not None and math.isfinite(cost_usd) and cost_usd > 0 else 0.0
        model = model[:MAX_MODEL_CHARS]
        totals = ModelTotals.of_call(model, usage, cost_usd, ok, spend=cost)
        tokens = 0
        if usage is not None:
            tokens = usage.total_tokens or (usage.prompt_tokens + usage.completion_tokens)
        self.store.settle(Charge(client or ANONYMOUS, model, totals, tokens, ticket))

    # --------------------------------------------------------------- helpers

    async def _known(self, name: str) -> ClientRow:
        row = await self.store.get_client(name) if validate_name(name) == [] else None
        if row is None:
            raise GatewayError(Reason.CLIENT_NOT_FOUND, f"no client named {name[:64]!r}")
        return row

    async def _record(self, row: ClientRow) -> ClientRecord:
        return ClientRecord(
            name=row.name,
            limits=row.limits,
            created_at=row.created_at,
            revoked_at=row.revoked_at,
            token_prefix=row.token_prefix,
            period_spend_usd=await self.store.period_spend(row),
        )


def total_of(models: builtins.list[ModelTotals]) -> ModelTotals:
    total = ModelTotals()
    for m in models:
        total = total.plus(replace(m, model=""))
    return total
