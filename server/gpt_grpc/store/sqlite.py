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

Conversations are tables (schema version 3): one row per conversation (its
record as JSON) and one per message, read and written on a worker thread so
the event loop never waits on the disk. A turn's lease lives in this process's
memory: one process is the only one using the file. Expired conversations read
as absent and are deleted every PURGE_SECONDS.
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from orjson import dumps as orjson_dumps
from orjson import loads as orjson_loads

from ..conversations import Conversation, Counted
from ..errors import GatewayError, Reason
from ..limits import Estimate, Limits, LocalLimiter, Periods, Ticket
from ..usage import COUNTED_FIELDS, ModelTotals
from .base import (
    ANY_OWNER,
    Appended,
    Charge,
    ClientRow,
    Lease,
    SettingsDoc,
    Store,
    StoreError,
    conversation_json,
    conversation_of,
    sorted_usage,
)

log = logging.getLogger("gpt_grpc.store")

T = TypeVar("T")

SCHEMA_VERSION = 3
FLUSH_SECONDS = 1.0
# Expired conversations are deleted this often.
PURGE_SECONDS = 60.0
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
# Version 3: conversations (the record as JSON, its messages one row each).
_SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    list_key TEXT NOT NULL,
    expires_at REAL NOT NULL,
    version INTEGER NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_by_owner ON conversations (owner, list_key);
CREATE INDEX IF NOT EXISTS conversations_by_key ON conversations (list_key);
CREATE INDEX IF NOT EXISTS conversations_by_expiry ON conversations (expires_at);
CREATE TABLE IF NOT EXISTS conversation_messages (
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    message BLOB NOT NULL,
    PRIMARY KEY (conversation_id, seq)
)
"""
_MIGRATIONS = ((1, _SCHEMA_V1), (2, _SCHEMA_V2), (3, _SCHEMA_V3))
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
        self._leases: dict[str, tuple[str, float]] = {}  # conversation id -> (token, until)
        self._purged_at = clock()

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
            if self._clock() - self._purged_at >= PURGE_SECONDS:
                try:
                    await self.purge_conversations()
                except Exception:
                    log.exception("could not remove expired conversations from %s", self.description)

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
                    steps = [script for number, script in _MIGRATIONS if version < number]
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

    # -- conversations ----------------------------------------------------------------

    async def _db(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` on a worker thread, holding the connection."""

        def run() -> T:
            with self._db_lock:
                if self._conn is None:
                    raise GatewayError(Reason.INTERNAL_ERROR, "the store is closed")
                return work(self._conn)

        return await asyncio.to_thread(run)

    async def create_conversation(self, conversation: Conversation) -> None:
        c = conversation

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO conversations (id, owner, list_key, expires_at, version, record)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (c.id, c.owner, c.list_key, c.expires_at, c.version, conversation_json(c)),
            )

        await self._db(insert)

    async def get_conversation(
        self, conversation_id: str, *, messages: bool = False
    ) -> tuple[Conversation, builtins.list[Counted]] | None:
        now = self._clock()

        def read(conn: sqlite3.Connection) -> tuple[Conversation, builtins.list[Counted]] | None:
            row = conn.execute(
                "SELECT record FROM conversations WHERE id = ? AND expires_at > ?", (conversation_id, now)
            ).fetchone()
            if row is None:
                return None
            found: builtins.list[Counted] = []
            if messages:
                found = [
                    Counted(orjson_loads(raw), tokens)
                    for tokens, raw in conn.execute(
                        "SELECT tokens, message FROM conversation_messages WHERE conversation_id = ? ORDER BY seq",
                        (conversation_id,),
                    )
                ]
            return conversation_of(row[0]), found

        return await self._db(read)

    async def list_conversations(self, owner: str, after: str | None, limit: int) -> builtins.list[Conversation]:
        now = self._clock()
        where: builtins.list[str] = ["expires_at > ?"]
        params: builtins.list[object] = [now]
        if owner != ANY_OWNER:
            where.append("owner = ?")
            params.append(owner)
        if after is not None:
            where.append("list_key < ?")
            params.append(after)
        sql = f"SELECT record FROM conversations WHERE {' AND '.join(where)} ORDER BY list_key DESC LIMIT ?"

        def read(conn: sqlite3.Connection) -> builtins.list[Conversation]:
            return [conversation_of(raw) for (raw,) in conn.execute(sql, (*params, limit))]

        return await self._db(read)

    async def delete_conversation(self, conversation: Conversation) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            with _transaction(conn):
                gone = conn.execute("DELETE FROM conversations WHERE id = ?", (conversation.id,)).rowcount
                conn.execute("DELETE FROM conversation_messages WHERE conversation_id = ?", (conversation.id,))
            return bool(gone)

        deleted = await self._db(delete)
        with self._lock:
            self._leases.pop(conversation.id, None)
        return deleted

    async def lease_conversation(self, conversation_id: str, owner: str, token: str, seconds: float) -> Lease:
        now = self._clock()

        def take(conn: sqlite3.Connection) -> Lease:
            row = conn.execute(
                "SELECT owner FROM conversations WHERE id = ? AND expires_at > ?", (conversation_id, now)
            ).fetchone()
            if row is None or (owner != ANY_OWNER and row[0] != owner):
                return Lease.MISSING
            with self._lock:
                held = self._leases.get(conversation_id)
                if held is not None and held[1] > now:
                    return Lease.BUSY
                self._leases[conversation_id] = (token, now + seconds)
            return Lease.TAKEN

        return await self._db(take)

    async def renew_lease(self, conversation_id: str, token: str, seconds: float) -> bool:
        now = self._clock()
        with self._lock:
            held = self._leases.get(conversation_id)
            if held is None or held[0] != token or held[1] <= now:
                return False
            self._leases[conversation_id] = (token, now + seconds)
            return True

    async def release_conversation(self, conversation_id: str, token: str) -> None:
        with self._lock:
            held = self._leases.get(conversation_id)
            if held is not None and held[0] == token:
                del self._leases[conversation_id]

    async def append_turn(
        self, conversation: Conversation, token: str, expected_version: int, messages: Sequence[Counted]
    ) -> Appended:
        c = conversation
        now = self._clock()

        def append(conn: sqlite3.Connection) -> Appended:
            with self._lock:
                held = self._leases.get(c.id)
                ours = held is not None and held[0] == token and held[1] > now
            row = conn.execute("SELECT version FROM conversations WHERE id = ?", (c.id,)).fetchone()
            if row is None:
                return Appended.MISSING
            if not ours or row[0] != expected_version:
                return Appended.LOST
            first = c.message_count - len(messages)
            with _transaction(conn):
                conn.executemany(
                    "INSERT INTO conversation_messages (conversation_id, seq, tokens, message) VALUES (?, ?, ?, ?)",
                    [(c.id, first + i, m.tokens, orjson_dumps(m.message)) for i, m in enumerate(messages)],
                )
                conn.execute(
                    "UPDATE conversations SET expires_at = ?, version = ?, record = ? WHERE id = ?",
                    (c.expires_at, c.version, conversation_json(c), c.id),
                )
            with self._lock:
                if self._leases.get(c.id, ("", 0.0))[0] == token:
                    del self._leases[c.id]
            return Appended.DONE

        return await self._db(append)

    async def purge_conversations(self) -> int:
        now = self._clock()
        self._purged_at = now

        def purge(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                conn.execute(
                    "DELETE FROM conversation_messages WHERE conversation_id IN"
                    " (SELECT id FROM conversations WHERE expires_at <= ?)",
                    (now,),
                )
                gone = conn.execute("DELETE FROM conversations WHERE expires_at <= ?", (now,)).rowcount
            return int(gone)

        purged = await self._db(purge)
        with self._lock:
            for conversation_id in [k for k, (_, until) in self._leases.items() if until <= now]:
                del self._leases[conversation_id]
        return purged


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction: committed when the block ends, rolled back when it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _exists(name: str) -> GatewayError:
    return GatewayError(Reason.CLIENT_EXISTS, f"a client named {name!r} exists")


def _active(row: ClientRow | None, name: str) -> ClientRow:
    if row is None or row.revoked_at is not None:
        raise GatewayError(Reason.CLIENT_NOT_FOUND, f"no active client named {name!r}")
    return row


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)
