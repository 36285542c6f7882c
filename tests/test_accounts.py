"""Per-client keys: tokens, limits, budgets and usage that survive a restart (time is faked)."""

from __future__ import annotations

import hashlib
import sqlite3
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gpt_grpc.accounts import (
    Accounts,
    AccountsStoreError,
    AuthFailureLimiter,
    ClientRecord,
    Limits,
    peer_host,
    validate_limits,
)
from gpt_grpc.chat import Usage
from gpt_grpc.errors import GatewayError, Reason
from gpt_grpc.usage import ModelTotals


def ts(text: str) -> float:
    """Unix seconds of an ISO UTC time ("2026-11-26T12:00")."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock(ts("2026-11-26T12:00:00"))


@pytest.fixture
def accounts(clock: Clock) -> Iterator[Accounts]:
    acc = Accounts(clock=clock)
    yield acc
    acc.close()


def error_of(fn: object, *args: object) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value


# ---------------------------------------------------------------- admin plane


def test_create_list_get_update_revoke(accounts: Accounts, clock: Clock) -> None:
    assert not accounts.enabled
    assert accounts.list() == []
    record, token = accounts.create("bob", Limits(requests_per_minute=10))
    assert accounts.enabled
    assert token.startswith("gptk_") and len(token) == 5 + 43
    assert record == ClientRecord(
        name="bob",
        limits=Limits(requests_per_minute=10),
        created_at=clock.now,
        revoked_at=None,
        token_prefix=token[:8],
        period_spend_usd=0.0,
    )
    clock.advance(1)
    accounts.create("alice", Limits())
    assert [c.name for c in accounts.list()] == ["alice", "bob"]
    assert accounts.get("bob") == record

    new_limits = Limits(tokens_per_minute=1000, budget_usd=5.0, budget_period="day")
    updated = accounts.update("bob", new_limits)
    assert updated.limits == new_limits
    assert accounts.get("bob").limits == new_limits

    clock.advance(1)
    revoked = accounts.revoke("bob")
    assert revoked.revoked_at == clock.now
    assert [c.name for c in accounts.list()] == ["alice"]
    assert [c.name for c in accounts.list(include_revoked=True)] == ["alice", "bob"]
    assert accounts.get("bob").revoked_at == clock.now  # still readable
    assert accounts.enabled  # alice is active
    accounts.revoke("alice")
    assert accounts.enabled  # only revoked clients: still closed, never reopened by a revoke


def test_not_found_and_revoked(accounts: Accounts) -> None:
    assert error_of(accounts.update, "nobody", Limits()).reason is Reason.CLIENT_NOT_FOUND
    assert error_of(accounts.revoke, "nobody").reason is Reason.CLIENT_NOT_FOUND
    assert error_of(accounts.get, "nobody").reason is Reason.CLIENT_NOT_FOUND
    assert error_of(accounts.usage, "nobody").reason is Reason.CLIENT_NOT_FOUND
    accounts.create("bob", Limits())
    accounts.revoke("bob")
    assert error_of(accounts.revoke, "bob").reason is Reason.CLIENT_NOT_FOUND
    assert error_of(accounts.update, "bob", Limits()).reason is Reason.CLIENT_NOT_FOUND


def test_duplicate_name(accounts: Accounts) -> None:
    accounts.create("bob", Limits())
    assert error_of(accounts.create, "bob", Limits()).reason is Reason.CLIENT_EXISTS
    accounts.revoke("bob")
    # A revoked client keeps its name (its usage is filed under it).
    assert error_of(accounts.create, "bob", Limits()).reason is Reason.CLIENT_EXISTS


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "slash/", "émile", "new\nline", "bob\n"])
def test_invalid_names(accounts: Accounts, name: str) -> None:
    err = error_of(accounts.create, name, Limits())
    assert err.reason is Reason.INVALID_REQUEST
    assert [v.field for v in err.field_violations] == ["name"]
    assert accounts.list(include_revoked=True) == []


@pytest.mark.parametrize("name", ["a", "a" * 64, "Team_A-1.prod"])
def test_valid_names(accounts: Accounts, name: str) -> None:
    assert accounts.create(name, Limits())[0].name == name


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
        (
            Limits(requests_per_minute=0, tokens_per_minute=-5, budget_usd=-1.0),
            ["limits.requests_per_minute", "limits.tokens_per_minute", "limits.budget_usd", "limits.budget_period"],
        ),
    ],
)
def test_invalid_limits(accounts: Accounts, limits: Limits, fields: list[str]) -> None:
    assert [v.field for v in validate_limits(limits)] == fields
    err = error_of(accounts.create, "bob", limits)
    assert err.reason is Reason.INVALID_REQUEST
    assert [v.field for v in err.field_violations] == fields
    accounts.create("alice", Limits())
    err = error_of(accounts.update, "alice", limits)
    assert [v.field for v in err.field_violations] == fields
    assert accounts.get("alice").limits == Limits()


def test_invalid_name_and_limits_reported_together(accounts: Accounts) -> None:
    err = error_of(accounts.create, "", Limits(requests_per_minute=0))
    assert [v.field for v in err.field_violations] == ["name", "limits.requests_per_minute"]


@pytest.mark.parametrize(
    "limits",
    [
        Limits(),
        Limits(requests_per_minute=1, tokens_per_minute=1),
        Limits(budget_usd=0.0, budget_period="day"),
        Limits(budget_usd=12.5, budget_period="month"),
        Limits(budget_usd=3, budget_period="day"),
    ],
)
def test_valid_limits(limits: Limits) -> None:
    assert validate_limits(limits) == []


# --------------------------------------------------------------------- tokens


def test_authenticate(accounts: Accounts) -> None:
    _, bob_token = accounts.create("bob", Limits())
    _, alice_token = accounts.create("alice", Limits())
    bob = accounts.authenticate(bob_token)
    assert bob is not None and bob.name == "bob"
    alice = accounts.authenticate(alice_token)
    assert alice is not None and alice.name == "alice"
    assert bob_token != alice_token
    for wrong in ["", bob_token[:-1], bob_token + "x", bob_token.upper(), "gptk_" + "A" * 43, "x" * 10_000]:
        assert accounts.authenticate(wrong) is None
    accounts.revoke("bob")
    assert accounts.authenticate(bob_token) is None  # at once
    assert accounts.authenticate(alice_token) is not None
    assert error_of(accounts.admit, "bob").reason is Reason.CLIENT_TOKEN_INVALID


def test_only_the_hash_is_stored(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "data" / "accounts.db"
    acc = Accounts(path, clock=clock)
    tokens = [acc.create(f"client{i}", Limits(requests_per_minute=5))[1] for i in range(3)]
    acc.record("client0", "gpt-4.1", Usage(1, 2, 3), 0.5, ok=True)
    acc.flush()
    # While open (WAL) and after close, no file beside the database holds a token.
    for phase in ("open", "closed"):
        if phase == "closed":
            acc.close()
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
    # And the tokens still work after a restart.
    again = Accounts(path, clock=clock)
    try:
        assert [again.authenticate(t) for t in tokens] == [again.get(f"client{i}") for i in range(3)]
    finally:
        again.close()


# ----------------------------------------------------------------- rate limits


def test_request_rate_limit(accounts: Accounts, clock: Clock) -> None:
    accounts.create("bob", Limits(requests_per_minute=3))
    accounts.create("alice", Limits(requests_per_minute=3))
    start = clock.now
    for _ in range(3):
        accounts.admit("bob")
        clock.advance(10)
    # 30 s after the first: it leaves the window in 30 s.
    err = error_of(accounts.admit, "bob")
    assert err.reason is Reason.CLIENT_RATE_LIMITED
    assert err.retry_after == pytest.approx(30.0)
    assert err.quota_violations == ()
    # A refused request is not counted: the wait does not grow.
    clock.advance(5)
    assert error_of(accounts.admit, "bob").retry_after == pytest.approx(25.0)
    accounts.admit("alice")  # another client is unaffected
    clock.now = start + 60  # the first leaves the window
    accounts.admit("bob")
    err = error_of(accounts.admit, "bob")
    assert err.retry_after == pytest.approx(10.0)  # the second (at +10) leaves at +70
    clock.advance(10)
    accounts.admit("bob")


def test_request_rate_limit_change_takes_effect(accounts: Accounts, clock: Clock) -> None:
    accounts.create("bob", Limits(requests_per_minute=5))
    for _ in range(4):
        accounts.admit("bob")
        clock.advance(1)
    accounts.update("bob", Limits(requests_per_minute=2))
    err = error_of(accounts.admit, "bob")
    # 4 in the window, limit 2: three must leave; the third (at +2) leaves at +62.
    assert err.retry_after == pytest.approx(58.0)
    accounts.update("bob", Limits())
    for _ in range(100):
        accounts.admit("bob")


def test_token_rate_limit(accounts: Accounts, clock: Clock) -> None:
    accounts.create("bob", Limits(tokens_per_minute=1000))
    start = clock.now
    accounts.admit("bob")
    accounts.record("bob", "gpt-4.1", Usage(prompt_tokens=300, completion_tokens=100, total_tokens=400), 0.0, ok=True)
    clock.advance(20)
    accounts.admit("bob")
    accounts.record("bob", "gpt-4.1", Usage(prompt_tokens=500, completion_tokens=100, total_tokens=600), 0.0, ok=True)
    clock.advance(5)
    err = error_of(accounts.admit, "bob")
    assert err.reason is Reason.CLIENT_RATE_LIMITED
    assert "tokens per minute" in err.message
    # 1000 tokens in the window; once the first 400 leave (at +60) it is under the limit.
    assert err.retry_after == pytest.approx(35.0)
    clock.now = start + 60
    accounts.admit("bob")
    # A failed call's tokens count too.
    accounts.record("bob", "gpt-4.1", Usage(prompt_tokens=400, total_tokens=400), None, ok=False)
    err = error_of(accounts.admit, "bob")
    assert err.retry_after == pytest.approx(20.0)  # the 600 from +20 leave at +80
    clock.now = start + 80
    accounts.admit("bob")


def test_token_window_bounded(accounts: Accounts, clock: Clock) -> None:
    accounts.create("bob", Limits(tokens_per_minute=10**9))
    for _ in range(10_000):
        accounts.record("bob", "m", Usage(total_tokens=1), None, ok=True)
        clock.advance(0.01)
    accounts.admit("bob")
    assert len(accounts._clients["bob"].tokens) <= 601  # one entry per 0.1 s slot
    # The last 60 s hold 6000 tokens; a slot leaves with its latest record (errs on the safe side).
    assert 6000 <= accounts._clients["bob"].tokens_sum <= 6010


def test_both_limits_wait_for_the_later(accounts: Accounts, clock: Clock) -> None:
    accounts.create("bob", Limits(requests_per_minute=2, tokens_per_minute=100))
    accounts.admit("bob")
    clock.advance(10)
    accounts.admit("bob")
    clock.advance(10)
    accounts.record("bob", "m", Usage(total_tokens=100), None, ok=True)
    err = error_of(accounts.admit, "bob")
    assert "requests per minute and 100 tokens per minute" in err.message
    assert err.retry_after == pytest.approx(60.0)  # tokens at +20 leave at +80; the request slot frees at +60


# --------------------------------------------------------------------- budgets


def test_daily_budget(accounts: Accounts, clock: Clock) -> None:
    accounts.create("bob", Limits(budget_usd=5.0, budget_period="day"))
    accounts.create("alice", Limits(budget_usd=5.0, budget_period="day"))
    accounts.admit("bob")
    accounts.record("bob", "gpt-4.1", Usage(10, 10, 20), 3.0, ok=True)
    accounts.admit("bob")
    accounts.record("bob", "gpt-4.1", Usage(10, 10, 20), 1.99, ok=True)
    accounts.admit("bob")  # $4.99 < $5
    accounts.record("bob", "gpt-4.1", Usage(10, 10, 20), 0.02, ok=True)
    assert accounts.get("bob").period_spend_usd == pytest.approx(5.01)
    err = error_of(accounts.admit, "bob")
    assert err.reason is Reason.CLIENT_BUDGET_EXCEEDED
    assert err.retry_after is None
    assert err.quota_violations == (("client:bob", "daily budget of $5.00 used: $5.01 spent since 2026-11-26T00:00Z"),)
    assert "2026-11-27T00:00Z" in err.message
    accounts.admit("alice")  # another client is unaffected
    clock.now = ts("2026-11-26T23:59:59")
    assert error_of(accounts.admit, "bob").reason is Reason.CLIENT_BUDGET_EXCEEDED
    clock.now = ts("2026-11-27T00:00:00")  # next UTC day
    accounts.admit("bob")
    assert accounts.get("bob").period_spend_usd == 0.0
    # Raising the budget lets the client through at once.
    accounts.record("bob", "gpt-4.1", None, 6.0, ok=False)
    assert error_of(accounts.admit, "bob").reason is Reason.CLIENT_BUDGET_EXCEEDED
    accounts.update("bob", Limits(budget_usd=10.0, budget_period="day"))
    accounts.admit("bob")


def test_zero_budget_refuses_everything(accounts: Accounts) -> None:
    accounts.create("bob", Limits(budget_usd=0.0, budget_period="month"))
    err = error_of(accounts.admit, "bob")
    assert err.quota_violations == (
        ("client:bob", "monthly budget of $0.00 used: $0.00 spent since 2026-11-01T00:00Z"),
    )


def test_budget_is_checked_before_rate_limits(accounts: Accounts) -> None:
    accounts.create("bob", Limits(requests_per_minute=1, budget_usd=1.0, budget_period="day"))
    accounts.admit("bob")
    accounts.record("bob", "m", None, 2.0, ok=True)
    assert error_of(accounts.admit, "bob").reason is Reason.CLIENT_BUDGET_EXCEEDED


def test_monthly_budget_across_month_boundary(accounts: Accounts, clock: Clock) -> None:
    clock.now = ts("2026-12-30T10:00:00")
    accounts.create("bob", Limits(budget_usd=10.0, budget_period="month"))
    accounts.create("daily", Limits(budget_usd=10.0, budget_period="day"))
    accounts.record("bob", "m", None, 6.0, ok=True)
    accounts.record("daily", "m", None, 6.0, ok=True)
    clock.now = ts("2026-12-31T23:00:00")  # another day, same month
    accounts.record("bob", "m", None, 4.5, ok=True)
    accounts.record("daily", "m", None, 4.5, ok=True)
    accounts.admit("daily")  # the daily budget reset: $4.50 today
    err = error_of(accounts.admit, "bob")
    assert err.quota_violations == (
        ("client:bob", "monthly budget of $10.00 used: $10.50 spent since 2026-12-01T00:00Z"),
    )
    assert "2027-01-01T00:00Z" in err.message
    assert accounts.get("bob").period_spend_usd == pytest.approx(10.5)
    assert accounts.get("daily").period_spend_usd == pytest.approx(4.5)
    clock.now = ts("2027-01-01T00:00:00")  # new month, new year
    accounts.admit("bob")
    assert accounts.get("bob").period_spend_usd == 0.0


def test_spend_without_budget_is_the_current_day(accounts: Accounts, clock: Clock) -> None:
    accounts.create("bob", Limits())
    accounts.record("bob", "m", None, 1.25, ok=True)
    accounts.record("bob", "m", None, None, ok=True)  # unpriced
    accounts.record("bob", "m", None, float("nan"), ok=True)  # never poisons the total
    assert accounts.list()[0].period_spend_usd == pytest.approx(1.25)
    clock.advance(86400)
    assert accounts.list()[0].period_spend_usd == 0.0


# ----------------------------------------------------------------------- usage


def test_usage_per_model(accounts: Accounts, clock: Clock) -> None:
    created = clock.now
    accounts.create("bob", Limits())
    accounts.create("alice", Limits())
    accounts.record("bob", "gpt-4.1", Usage(100, 20, 120, cached_prompt_tokens=50), 0.25, ok=True)
    accounts.record("bob", "gpt-4.1", Usage(10, 5, 15, reasoning_tokens=3), 0.75, ok=True)
    accounts.record("bob", "gpt-4.1", None, None, ok=False)
    accounts.record("bob", "aaa-model", Usage(1, 1, 2), None, ok=True)
    accounts.record("alice", "gpt-4.1", Usage(1000, 1000, 2000), 9.0, ok=True)
    accounts.record("nobody", "gpt-4.1", Usage(1, 1, 2), 1.0, ok=True)  # ignored
    models, total, since = accounts.usage("bob")
    assert since == created
    assert models == [
        ModelTotals(model="aaa-model", requests=1, prompt_tokens=1, completion_tokens=1, unpriced_requests=1),
        ModelTotals(
            model="gpt-4.1",
            requests=2,
            failed_requests=1,
            prompt_tokens=110,
            completion_tokens=25,
            cached_prompt_tokens=50,
            reasoning_tokens=3,
            cost_usd=1.0,
        ),
    ]
    assert total == ModelTotals(
        model="",
        requests=3,
        failed_requests=1,
        prompt_tokens=111,
        completion_tokens=26,
        cached_prompt_tokens=50,
        reasoning_tokens=3,
        cost_usd=1.0,
        unpriced_requests=1,
    )
    assert accounts.usage("alice")[1].cost_usd == 9.0
    accounts.revoke("bob")
    assert accounts.usage("bob")[0] == models  # usage stays


def test_usage_and_spend_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "accounts.db"
    clock.now = ts("2026-11-25T12:00:00")
    acc = Accounts(path, clock=clock)
    acc.create("bob", Limits(budget_usd=5.0, budget_period="day"))
    acc.create("monthly", Limits(budget_usd=5.0, budget_period="month"))
    acc.create("gone", Limits())
    acc.record("bob", "gpt-4.1", Usage(10, 10, 20), 2.0, ok=True)  # yesterday: not today's spend
    acc.record("monthly", "gpt-4.1", Usage(10, 10, 20), 2.0, ok=True)
    acc.flush()
    clock.now = ts("2026-11-26T12:00:00")
    acc.record("bob", "gpt-4.1", Usage(10, 10, 20), 3.0, ok=True)
    acc.record("bob", "gpt-4.1-mini", Usage(1, 2, 3), None, ok=True)
    acc.record("monthly", "gpt-4.1", Usage(10, 10, 20), 3.0, ok=True)
    acc.record("gone", "m", Usage(1, 1, 2), 0.5, ok=False)
    acc.revoke("gone")
    acc.record("bob", "gpt-4.1", None, 1.0, ok=False)
    before = {name: acc.usage(name) for name in ("bob", "monthly", "gone")}
    records = acc.list(include_revoked=True)
    acc.close()
    acc.close()  # idempotent

    again = Accounts(path, clock=clock)
    try:
        assert {name: again.usage(name) for name in ("bob", "monthly", "gone")} == before
        assert again.list(include_revoked=True) == records
        assert again.get("bob").period_spend_usd == pytest.approx(4.0)
        assert again.get("monthly").period_spend_usd == pytest.approx(5.0)
        assert again.enabled
        assert error_of(again.admit, "monthly").reason is Reason.CLIENT_BUDGET_EXCEEDED
        again.admit("bob")  # $4 of $5
        again.record("bob", "gpt-4.1", None, 1.0, ok=True)
        err = error_of(again.admit, "bob")
        assert err.quota_violations[0][1] == "daily budget of $5.00 used: $5.00 spent since 2026-11-26T00:00Z"
        again.flush()
        assert again.usage("bob")[1].cost_usd == pytest.approx(7.0)
    finally:
        again.close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT client, day, model, requests FROM client_usage ORDER BY 1, 2, 3").fetchall()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert version == 1
    assert mode == "wal"
    assert ("bob", "2026-11-25", "gpt-4.1", 1) in rows
    assert ("bob", "2026-11-26", "gpt-4.1", 2) in rows  # two flushes merged into one row


def test_memory_store_starts_empty(clock: Clock) -> None:
    acc = Accounts(clock=clock)
    acc.create("bob", Limits())
    acc.close()
    acc = Accounts(None, clock=clock)
    try:
        assert acc.list(include_revoked=True) == []
        assert not acc.enabled
    finally:
        acc.close()


def test_flush_from_another_thread(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "accounts.db"
    acc = Accounts(path, clock=clock)
    acc.create("bob", Limits())
    stop = threading.Event()
    errors: list[BaseException] = []

    def flusher() -> None:
        try:
            while not stop.is_set():
                acc.flush()
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
    acc.close()
    assert errors == []
    again = Accounts(path, clock=clock)
    try:
        assert again.usage("bob")[1].requests == 2000
    finally:
        again.close()


def test_failed_flush_keeps_the_rows(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "accounts.db"
    acc = Accounts(path, clock=clock)
    acc.create("bob", Limits())
    acc.record("bob", "m", Usage(1, 1, 2), 1.0, ok=True)
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    acc._conn.execute("PRAGMA busy_timeout = 0")  # type: ignore[union-attr]
    with pytest.raises(sqlite3.OperationalError):
        acc.flush()
    acc.record("bob", "m", Usage(1, 1, 2), 1.0, ok=True)
    blocker.execute("ROLLBACK")
    blocker.close()
    acc.close()
    again = Accounts(path, clock=clock)
    try:
        assert again.usage("bob")[1].requests == 2
        assert again.get("bob").period_spend_usd == 2.0
    finally:
        again.close()


def test_unusable_files_are_refused(tmp_path: Path, clock: Clock) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(AccountsStoreError, match="unusable"):
        Accounts(garbage, clock=clock)
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(AccountsStoreError, match="schema version 99"):
        Accounts(newer, clock=clock)


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
        ("ipv6:[::1]:5000", "ipv6:[::1]"),
        ("ipv6:%5B::1%5D:5000", "ipv6:%5B::1%5D"),
        ("ipv6:[2001:db8::1]:443", "ipv6:[2001:db8::1]"),
        ("ipv4:127.0.0.1", "ipv4:127.0.0.1"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
        ("", ""),
    ],
)
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host
