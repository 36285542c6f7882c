"""Per-client keys on SQLite (files, restarts, flushes), the limits' validation, and the auth brake."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import stat
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from gpt_grpc.accounts import Accounts
from gpt_grpc.chat import Usage
from gpt_grpc.errors import GatewayError, Reason
from gpt_grpc.limits import NO_ESTIMATE, Limits, validate_limits
from gpt_grpc.server.auth import AuthFailureLimiter, peer_host
from gpt_grpc.store.base import StoreError
from gpt_grpc.store.sqlite import SCHEMA_VERSION, SqliteStore
from tests.test_store import Clock, ts


@pytest.fixture
def clock() -> Clock:
    return Clock(ts("2026-11-26T12:00:00"))


def error_of(fn: object, *args: object) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


async def aerror(call: Awaitable[Any]) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await call
    return info.value


def opened(path: Path | None, clock: Clock) -> tuple[SqliteStore, Accounts]:
    store = SqliteStore(path, clock=clock)
    store.open_sync()
    return store, Accounts(store, clock=clock)


async def admit(acc: Accounts, name: str) -> None:
    row = await acc.store.get_client(name)
    assert row is not None
    await acc.admit(row, NO_ESTIMATE)


@pytest.mark.parametrize(
    "limits",
    [
        Limits(),
        Limits(requests_per_minute=1, tokens_per_minute=1),
        Limits(budget_usd=0.0, budget_period="day"),
        Limits(budget_usd=12.5, budget_period="month"),
        Limits(budget_usd=3, budget_period="day"),
        Limits(max_in_flight=1),
    ],
)
def test_valid_limits(limits: Limits) -> None:
    assert validate_limits(limits) == []


@pytest.mark.parametrize(
    ("limits", "fields"),
    [
        (Limits(requests_per_minute=0), ["limits.requests_per_minute"]),
        (Limits(requests_per_minute=-1), ["limits.requests_per_minute"]),
        (Limits(requests_per_minute=2**31), ["limits.requests_per_minute"]),
        (Limits(requests_per_minute=1.5), ["limits.requests_per_minute"]),  # type: ignore[arg-type]
        (Limits(requests_per_minute=True), ["limits.requests_per_minute"]),
        (Limits(tokens_per_minute=0), ["limits.tokens_per_minute"]),
        (Limits(tokens_per_minute=2**63), ["limits.tokens_per_minute"]),
        (Limits(budget_usd=-0.01, budget_period="day"), ["limits.budget_usd"]),
        (Limits(budget_usd=float("nan"), budget_period="day"), ["limits.budget_usd"]),
        (Limits(budget_usd=float("inf"), budget_period="month"), ["limits.budget_usd"]),
        (Limits(budget_usd=5.0), ["limits.budget_period"]),
        (Limits(budget_period="day"), ["limits.budget_period"]),
        (Limits(budget_usd=5.0, budget_period="week"), ["limits.budget_period"]),  # type: ignore[arg-type]
        (Limits(max_in_flight=0), ["limits.max_in_flight"]),
        (Limits(max_in_flight=2**31), ["limits.max_in_flight"]),
        (
            Limits(requests_per_minute=0, tokens_per_minute=-5, budget_usd=-1.0),
            ["limits.requests_per_minute", "limits.tokens_per_minute", "limits.budget_usd", "limits.budget_period"],
        ),
    ],
)
def test_invalid_limits(limits: Limits, fields: list[str]) -> None:
    assert [v.field for v in validate_limits(limits)] == fields


async def test_only_the_hash_is_stored(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "data" / "accounts.db"
    store, acc = opened(path, clock)
    tokens = [(await acc.create(f"client{i}", Limits(requests_per_minute=5)))[1] for i in range(3)]
    acc.record("client0", "gpt-4.1", Usage(1, 2, 3), 0.5, ok=True)
    store.flush_sync()
    # While open (WAL) and after close, no file beside the database holds a token.
    for phase in ("open", "closed"):
        if phase == "closed":
            store.close_sync()
        blobs = b"".join(p.read_bytes() for p in path.parent.iterdir())
        assert b"client0" in blobs  # the file does hold the clients
        for token in tokens:
            assert token.encode() not in blobs
            assert token[8:].encode() not in blobs  # the secret part, even without its prefix
            assert token[20:40].encode() not in blobs
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        hashes = [row[0] for row in conn.execute("SELECT token_sha256 FROM clients ORDER BY name")]
    conn.close()
    assert hashes == [hashlib.sha256(t.encode()).digest() for t in tokens]
    again_store, again = opened(path, clock)  # the tokens still work after a restart
    try:
        found = [await again.authenticate(t) for t in tokens]
        assert [r.name if r else None for r in found] == ["client0", "client1", "client2"]
    finally:
        again_store.close_sync()


async def test_usage_and_spend_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "accounts.db"
    clock.now = ts("2026-11-25T12:00:00")
    store, acc = opened(path, clock)
    await acc.create("bob", Limits(budget_usd=5.0, budget_period="day"))
    await acc.create("monthly", Limits(budget_usd=5.0, budget_period="month"))
    await acc.create("gone", Limits())
    acc.record("bob", "gpt-4.1", Usage(10, 10, 20), 2.0, ok=True)  # yesterday: not today's spend
    acc.record("monthly", "gpt-4.1", Usage(10, 10, 20), 2.0, ok=True)
    store.flush_sync()
    clock.now = ts("2026-11-26T12:00:00")
    acc.record("bob", "gpt-4.1", Usage(10, 10, 20), 3.0, ok=True)
    acc.record("bob", "gpt-4.1-mini", Usage(1, 2, 3), None, ok=True)
    acc.record("monthly", "gpt-4.1", Usage(10, 10, 20), 3.0, ok=True)
    acc.record("gone", "m", Usage(1, 1, 2), 0.5, ok=False)
    acc.record(None, "m", Usage(1, 1, 2), 0.5, ok=True)  # no client token: all-traffic usage
    await acc.revoke("gone")
    before = {name: await acc.usage(name) for name in ("bob", "monthly", "gone")}
    all_before = await acc.all_usage()
    records = await acc.list(include_revoked=True)
    store.close_sync()
    store.close_sync()  # idempotent

    again_store, again = opened(path, clock)
    try:
        assert {name: await again.usage(name) for name in ("bob", "monthly", "gone")} == before
        assert await again.all_usage() == all_before  # since included: when the database first counted
        assert await again.list(include_revoked=True) == records
        assert (await again.get("bob")).period_spend_usd == pytest.approx(3.0)
        assert (await again.get("monthly")).period_spend_usd == pytest.approx(5.0)
        assert again.enabled
        assert (await aerror(admit(again, "monthly"))).reason is Reason.CLIENT_BUDGET_EXCEEDED
        await admit(again, "bob")  # $3 of $5
        again.record("bob", "gpt-4.1", None, 2.0, ok=True)
        assert (await aerror(admit(again, "bob"))).reason is Reason.CLIENT_BUDGET_EXCEEDED
        again_store.flush_sync()
    finally:
        again_store.close_sync()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT client, day, model, requests FROM client_usage ORDER BY 1, 2, 3").fetchall()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert (version, mode) == (SCHEMA_VERSION, "wal")
    assert ("bob", "2026-11-25", "gpt-4.1", 1) in rows
    assert ("bob", "2026-11-26", "gpt-4.1", 2) in rows  # two flushes merged into one row
    assert ("", "2026-11-26", "m", 1) in rows


def test_version_1_database_is_upgraded(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    from gpt_grpc.store.sqlite import _SCHEMA_V1

    for statement in _SCHEMA_V1.split(";"):
        conn.execute(statement)
    conn.execute("INSERT INTO clients VALUES ('old', x'00', 'gptk_abc', 5, NULL, NULL, NULL, 1.0, NULL)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store, acc = opened(path, clock)
    try:
        assert asyncio.run(acc.get("old")).limits == Limits(requests_per_minute=5)
    finally:
        store.close_sync()


async def test_memory_store_starts_empty(clock: Clock) -> None:
    store, acc = opened(None, clock)
    await acc.create("bob", Limits())
    store.close_sync()
    store, acc = opened(None, clock)
    try:
        assert await acc.list(include_revoked=True) == []
        assert not acc.enabled
    finally:
        store.close_sync()


async def test_flush_from_another_thread(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "accounts.db"
    store, acc = opened(path, clock)
    await acc.create("bob", Limits())
    stop = threading.Event()
    errors: list[BaseException] = []

    def flusher() -> None:
        try:
            while not stop.is_set():
                store.flush_sync()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=flusher)
    thread.start()
    try:
        for _ in range(2000):
            acc.record("bob", "m", Usage(1, 1, 2), 0.001, ok=True)
    finally:
        stop.set()
        thread.join()
    store.close_sync()
    assert errors == []
    again_store, again = opened(path, clock)
    try:
        assert (await again.usage("bob"))[1].requests == 2000
    finally:
        again_store.close_sync()


async def test_failed_flush_keeps_the_rows(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "accounts.db"
    store, acc = opened(path, clock)
    await acc.create("bob", Limits())
    acc.record("bob", "m", Usage(1, 1, 2), 1.0, ok=True)
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    store._conn.execute("PRAGMA busy_timeout = 0")  # type: ignore[union-attr]
    with pytest.raises(sqlite3.OperationalError):
        store.flush_sync()
    acc.record("bob", "m", Usage(1, 1, 2), 1.0, ok=True)
    blocker.execute("ROLLBACK")
    blocker.close()
    store.close_sync()
    again_store, again = opened(path, clock)
    try:
        assert (await again.usage("bob"))[1].requests == 2
        assert (await again.get("bob")).period_spend_usd == 2.0
    finally:
        again_store.close_sync()


def test_unusable_files_are_refused(tmp_path: Path, clock: Clock) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="unusable"):
        opened(garbage, clock)
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="schema version 99"):
        opened(newer, clock)


# ---------------------------------------------------------- auth failure limit


def test_auth_failure_limiter_threshold_and_window() -> None:
    clock = Clock(1000.0)
    limiter = AuthFailureLimiter(max_failures=3, window_seconds=60.0, clock=clock)
    peer = "ipv4:10.0.0.1:50000"
    for _ in range(3):
        limiter.check(peer)
        limiter.failed(peer)
        clock.advance(10)
    err = error_of(limiter.check, peer)
    assert err.reason is Reason.AUTH_RATE_LIMITED
    assert err.retry_after == pytest.approx(30.0)  # the first failure (at 1000) leaves at 1060
    # Another connection from the same host is the same peer; another host is not.
    assert error_of(limiter.check, "ipv4:10.0.0.1:50001").reason is Reason.AUTH_RATE_LIMITED
    limiter.check("ipv4:10.0.0.2:50000")
    clock.now = 1060.0
    limiter.check(peer)  # two failures left in the window
    limiter.failed(peer)
    assert error_of(limiter.check, peer).retry_after == pytest.approx(10.0)  # the one at 1010 leaves at 1070
    clock.now = 1200.0
    limiter.check(peer)
    assert len(limiter) == 0  # forgotten once its failures expired


def test_auth_failure_limiter_is_bounded() -> None:
    clock = Clock(0.0)
    limiter = AuthFailureLimiter(max_failures=2, clock=clock, max_peers=100)
    limiter.failed("ipv4:1.1.1.1:1")
    limiter.failed("ipv4:1.1.1.1:2")
    for i in range(500):
        limiter.failed(f"ipv4:10.0.{i // 256}.{i % 256}:1")
    assert len(limiter) == 100
    limiter.check("ipv4:1.1.1.1:1")  # evicted (oldest)
    limiter.failed("ipv4:10.0.1.243:9")  # the newest
    assert error_of(limiter.check, "ipv4:10.0.1.243:1").reason is Reason.AUTH_RATE_LIMITED
    # One host's memory is bounded too.
    for _ in range(1000):
        limiter.failed("ipv4:2.2.2.2:1")
    assert len(limiter._peers["ipv4:2.2.2.2"]) == 2


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:5000", "ipv4:127.0.0.1"),
        ("ipv6:[::1]:5000", "ipv6:::/64"),
        ("ipv6:%5B::1%5D:5000", "ipv6:::/64"),
        # IPv6 sources count per /64: rotating addresses within it does not reset the brake.
        ("ipv6:[2001:db8::1]:443", "ipv6:2001:db8::/64"),
        ("ipv6:[2001:db8:0:0:ffff:1:2:3]:443", "ipv6:2001:db8::/64"),
        ("ipv6:[2001:db8:0:1::1]:443", "ipv6:2001:db8:0:1::/64"),
        ("ipv6:[::ffff:10.1.2.3]:80", "ipv4:10.1.2.3"),
        ("ipv6:[fe80::1%25eth0]:80", "ipv6:fe80::/64"),
        ("ipv4:127.0.0.1", "ipv4:127.0.0.1"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
        ("", ""),
    ],
)
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_counted_fields_are_every_usage_column() -> None:
    import dataclasses

    from gpt_grpc.usage import COUNTED_FIELDS, ModelTotals

    assert COUNTED_FIELDS == tuple(f.name for f in dataclasses.fields(ModelTotals) if f.name != "model")
