"""The store of one process: memory, persisted to a SQLite file or not at all.

Everything the hot path needs lives in memory; none of it touches the disk.
The SQLite file (WAL mode, 0600) holds the clients and per-(client, model,
UTC day) usage rows. Admin changes are written at once; usage rows are
buffered and written every second from a worker thread, and at close. At
start-up the clients, all-time usage and the spend of the current UTC day and
month are loaded back, so budgets survive a restart.

One writer: two processes must not share a file (each would keep its own
rate windows and spend). The server refuses `--workers` above 1 with this
store; a fleet uses the Redis store.

Settings live in memory here: a single process persists them through
`--state-file` (settings_sync.py), which sits beside this store.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hmac
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..errors import GatewayError, Reason
from ..limits import Estimate, Limits, LocalLimiter, Periods, Ticket
from ..usage import COUNTED_FIELDS, ModelTotals
from .base import Charge, ClientRow, SettingsDoc, Store, StoreError, sorted_usage

log = logging.getLogger("gpt_grpc.store")

SCHEMA_VERSION = 2
FLUSH_SECONDS = 1.0
_SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS clients (
    name TEXT PRIMARY KEY,
    token_sha256 BLOB NOT NULL UNIQUE,
    token_prefix TEXT NOT NULL,
    requests_per_minute INTEGER,
    tokens_per_minute INTEGER,
    budget_usd REAL,
    budget_period TEXT,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS client_usage (
    client TEXT NOT NULL,
    day TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    failed_requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_prompt_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    unpriced_requests INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client, day, model)
)
"""
# Version 2: per-client max_in_flight, and when counting started (usage of calls
# without a client token is filed under client '').
_SCHEMA_V2 = """
ALTER TABLE clients ADD COLUMN max_in_flight INTEGER;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
"""
USAGE_COLUMNS = COUNTED_FIELDS


class SqliteStore(Store):
    """See the module docstring. `path` None: in memory only."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.path = Path(path) if path is not None else None
        self.description = f"sqlite:///{self.path}" if self.path else "memory"
        self._clock = clock
        self._lock = threading.Lock()  # in-memory state
        self._db_lock = threading.Lock()  # the connection; taken before _lock, never after
        self._clients: dict[str, ClientRow] = {}
        self._by_hash: dict[bytes, ClientRow] = {}  # active clients only
        self._totals: dict[str, dict[str, ModelTotals]] = {}  # client -> model -> all-time
        self._pending: dict[tuple[str, str, str], ModelTotals] = {}  # (client, day, model) -> delta
        self._limiter = LocalLimiter(clock)
        self._settings: SettingsDoc | None = None
        self._since = clock()
        self._conn: sqlite3.Connection | None = None
        self._flusher: asyncio.Task[None] | None = None

    # -- life cycle ------------------------------------------------------------

    async def open(self) -> None:
        self.open_sync()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    def open_sync(self) -> None:
        """Open and load without an event loop (tests, tools)."""
        self._conn = self._connect()
        try:
            self._load()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        try:
            self.flush_sync()
        finally:
            with self._db_lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

    async def flush(self) -> None:
        await asyncio.to_thread(self.flush_sync)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception:
                log.exception("could not write usage to %s", self.description)

    @property
    def since(self) -> float:
        return self._since

    def _connect(self) -> sqlite3.Connection:
        if self.path is None:
            target = ":memory:"
        else:
            target = str(self.path)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if not self.path.exists():
                    # Created 0600 before SQLite opens it: it lists every client.
                    # SQLite gives its -wal and -shm files the same mode.
                    os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError as exc:
                raise StoreError(f"cannot create accounts database {self.path}: {exc.strerror}") from None
        try:
            conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open accounts database {target}: {exc}") from None
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"accounts database {target} has schema version {version}; this gateway knows "
                    f"{SCHEMA_VERSION} (written by a newer gateway?)"
                )
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    steps = ([_SCHEMA_V1] if version < 1 else []) + [_SCHEMA_V2]
                    for script in steps:
                        for statement in script.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('since', ?)", (repr(self._clock()),))
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"accounts database {target} is unusable: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _load(self) -> None:
        assert self._conn is not None
        conn = self._conn
        p = Periods.at(self._clock())
        try:
            self._since = float(conn.execute("SELECT value FROM meta WHERE key = 'since'").fetchone()[0])
            for row in conn.execute(
                "SELECT name, token_sha256, token_prefix, requests_per_minute, tokens_per_minute,"
                " budget_usd, budget_period, max_in_flight, created_at, revoked_at FROM clients"
            ):
                name, token_hash, prefix, rpm, tpm, budget, period, max_in_flight, created, revoked = row
                client = ClientRow(
                    name=name,
                    token_hash=bytes(token_hash),
                    token_prefix=prefix,
                    limits=Limits(rpm, tpm, budget, period, max_in_flight),
                    created_at=created,
                    revoked_at=revoked,
                )
                self._clients[name] = client
                if revoked is None:
                    self._by_hash[client.token_hash] = client
            columns = ", ".join(f"SUM({c})" for c in USAGE_COLUMNS)
            for client_name, model, *sums in conn.execute(
                f"SELECT client, model, {columns} FROM client_usage GROUP BY client, model"
            ):
                self._totals.setdefault(client_name, {})[model] = ModelTotals(model, *sums)
            day_spend = dict(
                conn.execute("SELECT client, SUM(cost_usd) FROM client_usage WHERE day = ? GROUP BY client", (p.day,))
            )
            month_spend = dict(
                conn.execute(
                    "SELECT client, SUM(cost_usd) FROM client_usage WHERE day >= ? AND day < ? GROUP BY client",
                    (p.month + "-01", p.month + "-99"),
                )
            )
            for name in self._clients:
                self._limiter.seed_spend(name, p.day, day_spend.get(name, 0.0), p.month, month_spend.get(name, 0.0))
        except (sqlite3.Error, TypeError, ValueError) as exc:
            raise StoreError(f"accounts database {self.path or ':memory:'} is unusable: {exc}") from None

    def flush_sync(self) -> None:
        """Write the buffered usage rows in one transaction.

        Safe from a worker thread. On failure the rows stay buffered (to be
        written by the next flush) and the sqlite3 error propagates.
        """
        with self._db_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending or self._conn is None:
                return
            placeholders = ", ".join("?" for _ in USAGE_COLUMNS)
            updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in USAGE_COLUMNS)
            sql = (
                f"INSERT INTO client_usage (client, day, model, {', '.join(USAGE_COLUMNS)})"
                f" VALUES (?, ?, ?, {placeholders})"
                f" ON CONFLICT (client, day, model) DO UPDATE SET {updates}"
            )
            rows = [
                (client, day, model, *(getattr(delta, c) for c in USAGE_COLUMNS))
                for (client, day, model), delta in pending.items()
            ]
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany(sql, rows)
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except BaseException:
                with self._lock:
                    for key, delta in pending.items():
                        later = self._pending.get(key)
                        self._pending[key] = delta if later is None else delta.plus(later)
                raise

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        """One admin change, committed at once (caller holds _db_lock)."""
        if self._conn is None:
            raise GatewayError(Reason.INTERNAL_ERROR, "the accounts store is closed")
        self._conn.execute(sql, params)

    # -- clients -----------------------------------------------------------------

    @property
    def has_clients(self) -> bool:
        return bool(self._clients)

    async def add_client(self, row: ClientRow) -> None:
        with self._db_lock:
            with self._lock:
                if row.name in self._clients:
                    raise _exists(row.name)
            lim = row.limits
            try:
                self._write(
                    "INSERT INTO clients (name, token_sha256, token_prefix, requests_per_minute, tokens_per_minute,"
                    " budget_usd, budget_period, max_in_flight, created_at, revoked_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    (
                        row.name,
                        row.token_hash,
                        row.token_prefix,
                        lim.requests_per_minute,
                        lim.tokens_per_minute,
                        _float_or_none(lim.budget_usd),
                        lim.budget_period,
                        lim.max_in_flight,
                        row.created_at,
                    ),
                )
            except sqlite3.IntegrityError:
                raise _exists(row.name) from None
            with self._lock:
                self._clients[row.name] = row
                self._by_hash[row.token_hash] = row

    async def set_limits(self, name: str, limits: Limits) -> ClientRow:
        with self._db_lock:
            with self._lock:
                row = _active(self._clients.get(name), name)
            self._write(
                "UPDATE clients SET requests_per_minute = ?, tokens_per_minute = ?, budget_usd = ?,"
                " budget_period = ?, max_in_flight = ? WHERE name = ?",
                (
                    limits.requests_per_minute,
                    limits.tokens_per_minute,
                    _float_or_none(limits.budget_usd),
                    limits.budget_period,
                    limits.max_in_flight,
                    name,
                ),
            )
            with self._lock:
                row = self._clients[name] = replace(row, limits=limits)
                self._by_hash[row.token_hash] = row
            if limits.requests_per_minute is None:
                self._limiter.forget(name, windows_only=True)
            return row

    async def revoke_client(self, name: str, at: float) -> ClientRow:
        with self._db_lock:
            with self._lock:
                row = _active(self._clients.get(name), name)
            self._write("UPDATE clients SET revoked_at = ? WHERE name = ?", (at, name))
            with self._lock:
                row = self._clients[name] = replace(row, revoked_at=at)
                self._by_hash.pop(row.token_hash, None)
            self._limiter.forget(name)
            return row

    async def list_clients(self) -> builtins.list[ClientRow]:
        with self._lock:
            return [row for _, row in sorted(self._clients.items())]

    async def get_client(self, name: str) -> ClientRow | None:
        with self._lock:
            return self._clients.get(name)

    async def find_token(self, token_hash: bytes) -> ClientRow | None:
        with self._lock:
            row = self._by_hash.get(token_hash)
        if row is None or not hmac.compare_digest(row.token_hash, token_hash):
            return None
        return row

    # -- limits --------------------------------------------------------------------

    async def admit(self, client: ClientRow, estimate: Estimate, *, requests_only: bool = False) -> Ticket:
        with self._lock:
            current = self._clients.get(client.name)
        if current is None or current.revoked_at is not None:
            raise GatewayError(Reason.CLIENT_TOKEN_INVALID, "the client token is unknown or revoked")
        return self._limiter.admit(client.name, current.limits, estimate, requests_only=requests_only)

    def settle(self, charge: Charge) -> None:
        day = Periods.at(self._clock()).day
        with self._lock:
            models = self._totals.setdefault(charge.client, {})
            previous = models.get(charge.model)
            models[charge.model] = charge.totals if previous is None else previous.plus(charge.totals)
            key = (charge.client, day, charge.model)
            buffered = self._pending.get(key)
            self._pending[key] = charge.totals if buffered is None else buffered.plus(charge.totals)
        if charge.client:
            self._limiter.settle(charge.ticket, charge.client, charge.tokens, charge.totals.cost_usd)

    async def period_spend(self, client: ClientRow) -> float:
        return self._limiter.spend(client.name, client.limits.budget_period)

    # -- usage -----------------------------------------------------------------------

    async def usage(self, client: str | None) -> builtins.list[ModelTotals]:
        with self._lock:
            if client is not None:
                return sorted_usage(dict(self._totals.get(client, {})))
            merged: dict[str, ModelTotals] = {}
            for models in self._totals.values():
                for model, totals in models.items():
                    seen = merged.get(model)
                    merged[model] = totals if seen is None else seen.plus(totals)
            return sorted_usage(merged)

    # -- settings ----------------------------------------------------------------------

    async def load_settings(self) -> SettingsDoc | None:
        return self._settings

    async def save_settings(self, doc: SettingsDoc, expected_generation: int) -> bool:
        current = self._settings.generation if self._settings is not None else 0
        if current != expected_generation:
            return False
        self._settings = doc
        return True


def _exists(name: str) -> GatewayError:
    return GatewayError(Reason.CLIENT_EXISTS, f"a client named {name!r} exists")


def _active(row: ClientRow | None, name: str) -> ClientRow:
    if row is None or row.revoked_at is not None:
        raise GatewayError(Reason.CLIENT_NOT_FOUND, f"no active client named {name!r}")
    return row


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)
