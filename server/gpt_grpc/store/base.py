"""What the gateway keeps, behind one small interface with two backends.

- `sqlite.SqliteStore`: one process. Clients, usage and spend in memory
  (the data plane never waits on the disk), persisted to a SQLite file
  (`sqlite:///path`, `--db`) or not at all (the default, in-memory). Limits
  are enforced by a `limits.LocalLimiter` in this process.
- `redis.RedisStore`: a fleet (`redis://`, `rediss://`). Every replica and
  worker shares clients, rate windows, reservations, spend, usage and the
  settings record. A call's admission is one round trip (a script); the
  settle at its end is buffered and written in batches.

What a backend holds, and where a later record kind goes:

| record | methods | SQLite | Redis (keys under the prefix) |
| --- | --- | --- | --- |
| clients, token hashes | add_client .. find_token | table clients | clients, tokens (hashes) |
| rate windows, reservations, in-flight | admit, settle | memory | rw:/tw:/if:<client> |
| spend per period | period_spend | table client_usage | spend:<client>:<period> |
| usage per model, per client | usage | table client_usage | usage:<client>, usage-all |
| settings (+ generation) | load_settings, save_settings | memory (--state-file beside it) | settings |

The settings record is one opaque JSON document with its generation
(settings_sync.py writes it): the upstream set of issue 13 goes into that
document (its "upstreams" member is reserved), so it is swapped with the rest,
atomically, and reaches every replica by the same notification. Conversations
(issue 14) are a new record kind: add methods here (e.g. `load_conversation`,
`append_turns`), a table in sqlite.py and keys `conv:<id>` in redis.py, and
run the shared suite (tests/test_store.py) against both backends.

This module knows nothing of gRPC or Redis.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from ..limits import Estimate, Limits, Ticket
from ..usage import ModelTotals

# Usage of calls without a client token is filed under this client name ("" is not a valid name).
ANONYMOUS = ""


class StoreError(Exception):
    """The store cannot be used at start-up (bad URL, unreachable, unknown schema)."""


@dataclass(frozen=True)
class ClientRow:
    """A client as stored (the token only as its SHA-256)."""

    name: str
    token_hash: bytes
    token_prefix: str
    limits: Limits
    created_at: float  # unix seconds
    revoked_at: float | None = None


@dataclass(frozen=True)
class Charge:
    """One finished call, for usage, spend and the token window."""

    client: str  # ANONYMOUS for calls without a client token
    model: str
    totals: ModelTotals  # what the call adds to its model's usage (cost included)
    tokens: int  # toward the client's tokens-per-minute window
    ticket: Ticket | None  # the reservation taken at admission, if any


@dataclass(frozen=True)
class SettingsDoc:
    """The settings record: opaque to the store, replaced whole."""

    generation: int
    body: bytes


SettingsListener = Callable[[SettingsDoc], None]
DegradedListener = Callable[[bool], None]


class Store(abc.ABC):
    """The interface both backends implement (see the module docstring)."""

    # Whether several processes share it: settings then need a secret key to hold an upstream key.
    shared: bool = False
    # Where it is, for logs (never a password).
    description: str = ""
    # Requests sent to the store (a pipeline or script is one): a metric, and the bench's figure.
    round_trips: int = 0

    def __init__(self) -> None:
        self._settings_listeners: list[SettingsListener] = []
        self._degraded_listeners: list[DegradedListener] = []

    # -- life cycle ------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and load; raises StoreError."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Write what is buffered and disconnect. Idempotent."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Write the buffered settles now (also done in the background)."""

    @property
    def degraded(self) -> bool:
        """The store cannot be reached: serving from what this process knows."""
        return False

    @property
    @abc.abstractmethod
    def since(self) -> float:
        """When the store first counted usage (unix seconds)."""

    def on_settings(self, listener: SettingsListener) -> None:
        """Call `listener` with each settings record saved elsewhere (another replica or worker)."""
        self._settings_listeners.append(listener)

    def on_degraded(self, listener: DegradedListener) -> None:
        """Call `listener` when the store goes away (True) or comes back (False)."""
        self._degraded_listeners.append(listener)

    # -- clients -----------------------------------------------------------------

    @property
    @abc.abstractmethod
    def has_clients(self) -> bool:
        """Any client was ever defined (revoked ones too): the data plane needs tokens."""

    @abc.abstractmethod
    async def add_client(self, row: ClientRow) -> None:
        """Define a client; GatewayError(CLIENT_EXISTS) if the name is taken (revoked ones too)."""

    @abc.abstractmethod
    async def set_limits(self, name: str, limits: Limits) -> ClientRow:
        """Replace an active client's limits; GatewayError(CLIENT_NOT_FOUND)."""

    @abc.abstractmethod
    async def revoke_client(self, name: str, at: float) -> ClientRow:
        """Revoke an active client's token; GatewayError(CLIENT_NOT_FOUND)."""

    @abc.abstractmethod
    async def list_clients(self) -> list[ClientRow]:
        """Every client, revoked ones too, sorted by name."""

    @abc.abstractmethod
    async def get_client(self, name: str) -> ClientRow | None:
        """One client, revoked or not."""

    @abc.abstractmethod
    async def find_token(self, token_hash: bytes) -> ClientRow | None:
        """The active client whose token has this SHA-256 (compared in constant time)."""

    # -- limits --------------------------------------------------------------------

    @abc.abstractmethod
    async def admit(self, client: ClientRow, estimate: Estimate, *, requests_only: bool = False) -> Ticket:
        """Reserve one call (at most one store round trip); raises the refusal (limits.py).

        `requests_only`: count it against the request rate alone (nothing to settle).
        """

    @abc.abstractmethod
    def settle(self, charge: Charge) -> None:
        """Record a finished call and settle its reservation. Never waits: buffered, written soon."""

    @abc.abstractmethod
    async def period_spend(self, client: ClientRow) -> float:
        """Spent and reserved in the client's current budget period (the UTC day without a budget)."""

    # -- usage -----------------------------------------------------------------------

    @abc.abstractmethod
    async def usage(self, client: str | None) -> list[ModelTotals]:
        """All-time usage per model, of one client or (None) of all traffic, sorted by model."""

    # -- settings ----------------------------------------------------------------------

    @abc.abstractmethod
    async def load_settings(self) -> SettingsDoc | None:
        """The settings record, None before the first Configure."""

    @abc.abstractmethod
    async def save_settings(self, doc: SettingsDoc, expected_generation: int) -> bool:
        """Replace the record if its generation is still `expected_generation` (0: none yet).

        False when another writer got there first; GatewayError(STORE_UNAVAILABLE)
        when the store cannot be reached (nothing is changed then).
        """

    # -- for the backends ----------------------------------------------------------------

    def _settings_changed(self, doc: SettingsDoc) -> None:
        for listener in self._settings_listeners:
            listener(doc)

    def _degraded_changed(self, degraded: bool) -> None:
        for listener in self._degraded_listeners:
            listener(degraded)


def sorted_usage(models: dict[str, ModelTotals]) -> list[ModelTotals]:
    return sorted(models.values(), key=lambda m: m.model)
