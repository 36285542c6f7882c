"""Per-client keys: named clients, their tokens, rate limits, budgets and usage.

An operator defines clients through the admin RPCs. Each gets a bearer token
(shown once, stored as its SHA-256 only), optional sliding-minute request and
token limits, and an optional spend budget per UTC day or month. With no
client defined (`Accounts.enabled` is false) the data plane stays open.

Everything the hot path needs (`authenticate`, `admit`, `record`, `usage`)
lives in memory under one `threading.Lock`; none of it touches the disk.
The SQLite file (WAL mode) holds the clients and per-(client, model, UTC day)
usage rows. Admin changes are written at once; usage rows are buffered and
written by `flush()` (every second from a worker thread, and at shutdown).
At start-up the clients, each client's all-time usage and its spend in the
current UTC day and month are loaded back, so budgets survive a restart.

The store has one writer: two gateways must not share a file (each keeps its
own in-memory view of spend and rate windows).

Tokens are `gptk_` + 32 random bytes (urlsafe base64): 256 bits of entropy,
so an unsalted SHA-256 is enough to make the stored value useless to a thief
and cheap to check. Presented tokens are hashed, looked up by hash, and the
stored hash is then compared with `hmac.compare_digest`.

This module knows nothing of gRPC or protobuf.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from .chat import Usage
from .errors import FieldViolation, GatewayError, Reason, invalid
from .usage import ModelTotals

TOKEN_PREFIX = "gptk_"
# Characters of the token kept in clear to tell tokens apart ("gptk_AbC").
SHOWN_PREFIX_LENGTH = 8
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
WINDOW_SECONDS = 60.0
# Bounds of the proto's ClientLimits fields (int32 / int64).
MAX_REQUESTS_PER_MINUTE = 2**31 - 1
MAX_TOKENS_PER_MINUTE = 2**63 - 1
# Longer bearer tokens are refused without hashing them (ours are 48 chars).
MAX_TOKEN_LENGTH = 256
# Token-window resolution: records within one slot share an entry, so a
# client's token window holds at most WINDOW_SECONDS / slot entries.
_TOKEN_SLOT_SECONDS = 0.1

SCHEMA_VERSION = 1
_SCHEMA = """
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
);
"""
_USAGE_COLUMNS = (
    "requests",
    "failed_requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced_requests",
)


class AccountsStoreError(Exception):
    """The accounts database exists but cannot be used."""


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    budget_usd: float | None = None
    budget_period: Literal["day", "month"] | None = None  # required iff budget_usd is set


@dataclass(frozen=True)
class ClientRecord:
    name: str
    limits: Limits
    created_at: float  # unix seconds
    revoked_at: float | None
    token_prefix: str  # first 8 chars of the token, e.g. "gptk_AbC"
    period_spend_usd: float  # spend in the current budget period (current UTC day if no budget)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_limits(limits: Limits) -> list[FieldViolation]:
    """Every problem with `limits`, as field violations under "limits."."""
    out: list[FieldViolation] = []
    rpm = limits.requests_per_minute
    if rpm is not None and (not _is_int(rpm) or not 1 <= rpm <= MAX_REQUESTS_PER_MINUTE):
        out.append(
            FieldViolation("limits.requests_per_minute", f"must be a whole number from 1 to {MAX_REQUESTS_PER_MINUTE}")
        )
    tpm = limits.tokens_per_minute
    if tpm is not None and (not _is_int(tpm) or not 1 <= tpm <= MAX_TOKENS_PER_MINUTE):
        out.append(
            FieldViolation("limits.tokens_per_minute", f"must be a whole number from 1 to {MAX_TOKENS_PER_MINUTE}")
        )
    budget = limits.budget_usd
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget) or budget < 0
    ):
        out.append(FieldViolation("limits.budget_usd", "must be a finite amount of USD, 0 or more"))
    period = limits.budget_period
    if period is not None and period not in ("day", "month"):
        out.append(FieldViolation("limits.budget_period", "must be 'day' or 'month'"))
    elif budget is not None and period is None:
        out.append(FieldViolation("limits.budget_period", "is required when budget_usd is set"))
    elif budget is None and period is not None:
        out.append(FieldViolation("limits.budget_period", "is only allowed with budget_usd"))
    return out


def validate_name(name: str) -> list[FieldViolation]:
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        return [FieldViolation("name", "must be 1 to 64 letters, digits, '_', '-' or '.'")]
    return []


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _usd(amount: float) -> str:
    if amount == 0 or abs(amount) >= 0.1:
        return f"${amount:,.2f}"
    return "$" + f"{amount:.6f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class _Periods:
    """The UTC day and month containing one instant, with their bounds."""

    day: str  # "2026-11-26"
    day_start: float
    day_end: float
    month: str  # "2026-11"
    month_start: float
    month_end: float

    @staticmethod
    def at(now: float) -> _Periods:
        t = datetime.fromtimestamp(now, UTC)
        day0 = datetime(t.year, t.month, t.day, tzinfo=UTC)
        month0 = datetime(t.year, t.month, 1, tzinfo=UTC)
        month1 = (
            datetime(t.year + 1, 1, 1, tzinfo=UTC) if t.month == 12 else datetime(t.year, t.month + 1, 1, tzinfo=UTC)
        )
        return _Periods(
            day=day0.strftime("%Y-%m-%d"),
            day_start=day0.timestamp(),
            day_end=day0.timestamp() + 86400.0,
            month=month0.strftime("%Y-%m"),
            month_start=month0.timestamp(),
            month_end=month1.timestamp(),
        )

    def contains(self, now: float) -> bool:
        return self.day_start <= now < self.day_end


@dataclass
class _Client:
    """One client's mutable in-memory state (guarded by Accounts._lock)."""

    name: str
    limits: Limits
    created_at: float
    revoked_at: float | None
    token_prefix: str
    token_hash: bytes
    # Spend in the UTC day / month named by the keys; reset when they change.
    day: str = ""
    day_spend: float = 0.0
    month: str = ""
    month_spend: float = 0.0
    # Admission times within the last minute (tracked only with a request limit).
    requests: deque[float] = field(default_factory=deque)
    # (time of the latest record in the slot, slot index, tokens) per slot.
    tokens: deque[tuple[float, int, int]] = field(default_factory=deque)
    tokens_sum: int = 0
    # All-time usage per model (persisted + buffered).
    totals: dict[str, ModelTotals] = field(default_factory=dict)


class Accounts:
    """The clients, their limits and their usage. See the module docstring."""

    def __init__(
        self, db_path: str | os.PathLike[str] | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # in-memory state
        self._db_lock = threading.Lock()  # the connection; taken before _lock, never after
        self._clients: dict[str, _Client] = {}
        self._by_hash: dict[bytes, _Client] = {}  # active (not revoked) clients only
        self._pending: dict[tuple[str, str, str], ModelTotals] = {}  # (client, day, model) -> delta
        self._periods = _Periods.at(clock())
        self.path = Path(db_path) if db_path is not None else None
        self._conn: sqlite3.Connection | None = self._open()
        try:
            self._load()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    # ----------------------------------------------------------------- store

    def _open(self) -> sqlite3.Connection:
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
                raise AccountsStoreError(f"cannot create accounts database {self.path}: {exc.strerror}") from None
        try:
            conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise AccountsStoreError(f"cannot open accounts database {target}: {exc}") from None
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise AccountsStoreError(
                    f"accounts database {target} has schema version {version}; this gateway knows "
                    f"{SCHEMA_VERSION} (written by a newer gateway?)"
                )
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            conn.close()
            raise AccountsStoreError(f"accounts database {target} is unusable: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _load(self) -> None:
        assert self._conn is not None
        p = self._periods
        conn = self._conn
        try:
            for row in conn.execute(
                "SELECT name, token_sha256, token_prefix, requests_per_minute, tokens_per_minute,"
                " budget_usd, budget_period, created_at, revoked_at FROM clients"
            ):
                name, token_hash, prefix, rpm, tpm, budget, period, created, revoked = row
                client = _Client(
                    name=name,
                    limits=Limits(rpm, tpm, budget, period),
                    created_at=created,
                    revoked_at=revoked,
                    token_prefix=prefix,
                    token_hash=bytes(token_hash),
                    day=p.day,
                    month=p.month,
                )
                self._clients[name] = client
                if revoked is None:
                    self._by_hash[client.token_hash] = client
            columns = ", ".join(f"SUM({c})" for c in _USAGE_COLUMNS)
            for client_name, model, *sums in conn.execute(
                f"SELECT client, model, {columns} FROM client_usage GROUP BY client, model"
            ):
                loaded = self._clients.get(client_name)
                if loaded is not None:
                    loaded.totals[model] = ModelTotals(model, *sums)
            for client_name, spend in conn.execute(
                "SELECT client, SUM(cost_usd) FROM client_usage WHERE day = ? GROUP BY client", (p.day,)
            ):
                if client_name in self._clients:
                    self._clients[client_name].day_spend = spend
            for client_name, spend in conn.execute(
                "SELECT client, SUM(cost_usd) FROM client_usage WHERE day >= ? AND day < ? GROUP BY client",
                (p.month + "-01", p.month + "-99"),
            ):
                if client_name in self._clients:
                    self._clients[client_name].month_spend = spend
        except sqlite3.Error as exc:
            raise AccountsStoreError(f"accounts database {self.path or ':memory:'} is unusable: {exc}") from None

    def flush(self) -> None:
        """Write the buffered usage rows in one transaction.

        Safe to call from a worker thread. On failure the rows stay buffered
        (to be written by the next flush) and the sqlite3 error propagates.
        """
        with self._db_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            if not pending or self._conn is None:
                return
            placeholders = ", ".join("?" for _ in _USAGE_COLUMNS)
            updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in _USAGE_COLUMNS)
            sql = (
                f"INSERT INTO client_usage (client, day, model, {', '.join(_USAGE_COLUMNS)})"
                f" VALUES (?, ?, ?, {placeholders})"
                f" ON CONFLICT (client, day, model) DO UPDATE SET {updates}"
            )
            rows = [
                (client, day, model, *(getattr(delta, c) for c in _USAGE_COLUMNS))
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

    def close(self) -> None:
        """Flush and close. Idempotent."""
        try:
            self.flush()
        finally:
            with self._db_lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        """One admin change, committed at once (caller holds _db_lock)."""
        if self._conn is None:
            raise GatewayError(Reason.INTERNAL_ERROR, "the accounts store is closed")
        self._conn.execute(sql, params)

    # ----------------------------------------------------------- admin plane

    @property
    def enabled(self) -> bool:
        """Any client was ever defined (revoked ones too): data-plane calls need a token.

        Revoking the last client must not reopen the gateway to everyone: an
        operator revoking a leaked token expects less access, not more.
        """
        return bool(self._clients)

    def create(self, name: str, limits: Limits) -> tuple[ClientRecord, str]:
        """Define a client; returns it and its token (shown this once, stored hashed)."""
        violations = validate_name(name) + validate_limits(limits)
        if violations:
            raise invalid(violations)
        with self._db_lock:
            with self._lock:
                if name in self._clients:
                    raise GatewayError(Reason.CLIENT_EXISTS, f"a client named {name!r} exists")
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            now = self._clock()
            client = _Client(
                name=name,
                limits=limits,
                created_at=now,
                revoked_at=None,
                token_prefix=token[:SHOWN_PREFIX_LENGTH],
                token_hash=hash_token(token),
            )
            try:
                self._write(
                    "INSERT INTO clients (name, token_sha256, token_prefix, requests_per_minute,"
                    " tokens_per_minute, budget_usd, budget_period, created_at, revoked_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    (
                        name,
                        client.token_hash,
                        client.token_prefix,
                        limits.requests_per_minute,
                        limits.tokens_per_minute,
                        _float_or_none(limits.budget_usd),
                        limits.budget_period,
                        now,
                    ),
                )
            except sqlite3.IntegrityError:
                raise GatewayError(Reason.CLIENT_EXISTS, f"a client named {name!r} exists") from None
            with self._lock:
                self._clients[name] = client
                self._by_hash[client.token_hash] = client
                return self._record_of(client, now), token

    def update(self, name: str, limits: Limits) -> ClientRecord:
        """Replace a client's limits (all of them). Revoked clients are not found."""
        violations = validate_limits(limits)
        if violations:
            raise invalid(violations)
        with self._db_lock:
            with self._lock:
                client = self._active(name)
            self._write(
                "UPDATE clients SET requests_per_minute = ?, tokens_per_minute = ?, budget_usd = ?,"
                " budget_period = ? WHERE name = ?",
                (
                    limits.requests_per_minute,
                    limits.tokens_per_minute,
                    _float_or_none(limits.budget_usd),
                    limits.budget_period,
                    name,
                ),
            )
            with self._lock:
                client.limits = limits
                if limits.requests_per_minute is None:
                    client.requests.clear()
                return self._record_of(client, self._clock())

    def revoke(self, name: str) -> ClientRecord:
        """Revoke a client's token at once; its usage stays. A revoked client is not found."""
        with self._db_lock:
            with self._lock:
                client = self._active(name)
            now = self._clock()
            self._write("UPDATE clients SET revoked_at = ? WHERE name = ?", (now, name))
            with self._lock:
                client.revoked_at = now
                self._by_hash.pop(client.token_hash, None)
                client.requests.clear()
                client.tokens.clear()
                client.tokens_sum = 0
                return self._record_of(client, now)

    def list(self, include_revoked: bool = False) -> list[ClientRecord]:
        """The clients sorted by name."""
        now = self._clock()
        with self._lock:
            return [
                self._record_of(c, now)
                for _, c in sorted(self._clients.items())
                if include_revoked or c.revoked_at is None
            ]

    def get(self, name: str) -> ClientRecord:
        """One client, revoked or not."""
        with self._lock:
            return self._record_of(self._known(name), self._clock())

    def usage(self, name: str) -> tuple[builtins.list[ModelTotals], ModelTotals, float]:
        """(per model sorted by name, total, since = the client's creation time)."""
        with self._lock:
            client = self._known(name)
            models = sorted(client.totals.values(), key=lambda m: m.model)
            since = client.created_at
        total = ModelTotals()
        for m in models:
            total = total.plus(replace(m, model=""))
        return models, total, since

    # ------------------------------------------------------------ data plane

    def authenticate(self, token: str) -> ClientRecord | None:
        """The active client holding `token`, or None (unknown or revoked)."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        digest = hash_token(token)
        with self._lock:
            client = self._by_hash.get(digest)
            if client is None or not hmac.compare_digest(client.token_hash, digest):
                return None
            return self._record_of(client, self._clock())

    def admit(self, name: str, *, requests_only: bool = False) -> None:
        """Let one call of `name` through, or raise why not (the refused call is not counted).

        `requests_only`: a call that costs nothing upstream (CountTokens) is held
        to the request rate alone, not to the token rate or the budget.
        """
        now = self._clock()
        with self._lock:
            client = self._clients.get(name)
            if client is None or client.revoked_at is not None:
                raise GatewayError(Reason.CLIENT_TOKEN_INVALID, "the client token is unknown or revoked")
            limits = client.limits
            if limits.budget_usd is not None and not requests_only:
                p = self._roll(client, now)
                if limits.budget_period == "month":
                    spend, start, end, label = client.month_spend, p.month_start, p.month_end, "monthly"
                else:
                    spend, start, end, label = client.day_spend, p.day_start, p.day_end, "daily"
                if spend >= limits.budget_usd:
                    since = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%MZ")
                    resets = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%dT%H:%MZ")
                    raise GatewayError(
                        Reason.CLIENT_BUDGET_EXCEEDED,
                        f"client {name!r} has used its {label} budget of {_usd(limits.budget_usd)}; "
                        f"it resets at {resets}",
                        quota_violations=[
                            (
                                f"client:{name}",
                                f"{label} budget of {_usd(limits.budget_usd)} used: {_usd(spend)} spent since {since}",
                            )
                        ],
                    )
            horizon = now - WINDOW_SECONDS
            wait = 0.0
            why: list[str] = []
            rpm = limits.requests_per_minute
            if rpm is not None:
                requests = client.requests
                while requests and requests[0] <= horizon:
                    requests.popleft()
                if len(requests) >= rpm:
                    # The (len - rpm + 1)th oldest must leave for a slot to free.
                    wait = max(wait, requests[len(requests) - rpm] - horizon)
                    why.append(f"{rpm} requests per minute")
            tpm = None if requests_only else limits.tokens_per_minute
            if tpm is not None:
                self._expire_tokens(client, horizon)
                if client.tokens_sum >= tpm:
                    remaining = client.tokens_sum
                    for at, _, n in client.tokens:
                        remaining -= n
                        if remaining < tpm:
                            wait = max(wait, at - horizon)
                            break
                    why.append(f"{tpm} tokens per minute")
            if why:
                retry_after = min(max(wait, 0.001), WINDOW_SECONDS)
                raise GatewayError(
                    Reason.CLIENT_RATE_LIMITED,
                    f"client {name!r} is over its limit of {' and '.join(why)}; retry in {retry_after:.1f}s",
                    retry_after=retry_after,
                )
            if rpm is not None:
                client.requests.append(now)

    def record(self, name: str, model: str, usage: Usage | None, cost_usd: float | None, ok: bool) -> None:
        """Account one finished call of `name` (tokens, spend, usage rows). Unknown names are ignored."""
        now = self._clock()
        cost = cost_usd if cost_usd is not None and math.isfinite(cost_usd) and cost_usd > 0 else 0.0
        delta = replace(ModelTotals.of_call(model, usage, cost_usd, ok), cost_usd=cost)
        tokens = 0
        if usage is not None:
            tokens = usage.total_tokens or (usage.prompt_tokens + usage.completion_tokens)
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                return
            p = self._roll(client, now)
            client.day_spend += cost
            client.month_spend += cost
            if tokens > 0 and client.revoked_at is None:
                self._expire_tokens(client, now - WINDOW_SECONDS)
                slot = math.floor(now / _TOKEN_SLOT_SECONDS)
                if client.tokens and client.tokens[-1][1] == slot:
                    _, _, n = client.tokens[-1]
                    client.tokens[-1] = (max(now, client.tokens[-1][0]), slot, n + tokens)
                else:
                    client.tokens.append((now, slot, tokens))
                client.tokens_sum += tokens
            previous = client.totals.get(model)
            client.totals[model] = delta if previous is None else previous.plus(delta)
            key = (name, p.day, model)
            buffered = self._pending.get(key)
            self._pending[key] = delta if buffered is None else buffered.plus(delta)

    # --------------------------------------------------------------- helpers

    def _roll(self, client: _Client, now: float) -> _Periods:
        """The current periods; resets the client's spend when its day or month has passed."""
        p = self._periods
        if not p.contains(now):
            p = self._periods = _Periods.at(now)
        if client.day != p.day:
            client.day, client.day_spend = p.day, 0.0
        if client.month != p.month:
            client.month, client.month_spend = p.month, 0.0
        return p

    @staticmethod
    def _expire_tokens(client: _Client, horizon: float) -> None:
        tokens = client.tokens
        while tokens and tokens[0][0] <= horizon:
            client.tokens_sum -= tokens.popleft()[2]

    def _known(self, name: str) -> _Client:
        client = self._clients.get(name)
        if client is None:
            raise GatewayError(Reason.CLIENT_NOT_FOUND, f"no client named {name!r}")
        return client

    def _active(self, name: str) -> _Client:
        client = self._clients.get(name)
        if client is None or client.revoked_at is not None:
            raise GatewayError(Reason.CLIENT_NOT_FOUND, f"no active client named {name!r}")
        return client

    def _record_of(self, client: _Client, now: float) -> ClientRecord:
        self._roll(client, now)
        spend = client.month_spend if client.limits.budget_period == "month" else client.day_spend
        return ClientRecord(
            name=client.name,
            limits=client.limits,
            created_at=client.created_at,
            revoked_at=client.revoked_at,
            token_prefix=client.token_prefix,
            period_spend_usd=spend,
        )


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


_PEER_PORT = re.compile(r"(ipv4:[^:]+|ipv6:(?:\[[^\]]*\]|%5B.*%5D)):\d+", re.IGNORECASE)


def peer_host(peer: str) -> str:
    """The host of a gRPC peer string, without the port.

    "ipv4:1.2.3.4:5678" -> "ipv4:1.2.3.4"; "ipv6:[::1]:5678" (or "ipv6:%5B::1%5D:5678")
    -> "ipv6:[::1]" ("ipv6:%5B::1%5D"). Failures are counted per host: a new
    connection (a new port) must not reset them.
    """
    match = _PEER_PORT.fullmatch(peer)
    return match.group(1) if match else peer


class AuthFailureLimiter:
    """Refuses peers (by host) that failed authentication too often within a sliding window."""

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
        # host -> times of its recent failures (the last max_failures), least recently failed first.
        self._peers: OrderedDict[str, deque[float]] = OrderedDict()

    def check(self, peer: str) -> None:
        """Raise AUTH_RATE_LIMITED when `peer` failed max_failures times within the window."""
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
        """Hosts tracked."""
        with self._lock:
            return len(self._peers)
