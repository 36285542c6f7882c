"""One suite, both store backends: SQLite (in memory) and a real redis-server (time is faked).

Whatever a backend is, clients, tokens, rate windows, reservations, budgets,
calls in flight, usage and the settings record behave the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from gpt_grpc.accounts import Accounts, ClientRecord
from gpt_grpc.chat import Usage
from gpt_grpc.conversations import Conversation, Counted, Policy
from gpt_grpc.errors import GatewayError, Reason
from gpt_grpc.limits import NO_ESTIMATE, Estimate, Limits, Ticket
from gpt_grpc.store import sqlite as sqlite_module
from gpt_grpc.store.base import ANY_OWNER, Appended, ClientRow, Lease, SettingsDoc, Store
from gpt_grpc.store.redis import COMMAND_TIMEOUT_SECONDS, RedisStore
from gpt_grpc.store.sqlite import SqliteStore
from gpt_grpc.usage import ModelTotals
from tests.redis_server import RedisServer


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


async def open_store(kind: str, clock: Clock, request: pytest.FixtureRequest) -> Store:
    store: Store
    if kind == "sqlite":
        store = SqliteStore(None, clock=clock)
    else:
        store = RedisStore(request.getfixturevalue("redis_url"), clock=clock)
    await store.open()
    return store


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Store]:
    s = await open_store(request.param, clock, request)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def accounts(store: Store, clock: Clock) -> Accounts:
    return Accounts(store, clock=clock)


async def error_of(call: Awaitable[Any]) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await call
    return info.value


async def admit(acc: Accounts, name: str, estimate: Estimate = NO_ESTIMATE) -> Ticket | None:
    row = await acc.store.get_client(name)
    assert row is not None
    return await acc.admit(row, estimate)


async def refused(acc: Accounts, name: str, estimate: Estimate = NO_ESTIMATE) -> GatewayError:
    return await error_of(admit(acc, name, estimate))


async def record(
    acc: Accounts,
    name: str | None,
    model: str,
    usage: Usage | None,
    cost: float | None,
    ok: bool = True,
    ticket: Ticket | None = None,
) -> None:
    """One finished call, written through (the Redis store buffers settles)."""
    acc.record(name, model, usage, cost, ok, ticket)
    await acc.store.flush()


# ---------------------------------------------------------------- admin plane


async def test_create_list_get_update_revoke(accounts: Accounts, clock: Clock) -> None:
    assert not accounts.enabled
    assert await accounts.list() == []
    record_, token = await accounts.create("bob", Limits(requests_per_minute=10))
    assert accounts.enabled
    assert token.startswith("gptk_") and len(token) == 5 + 43
    assert record_ == ClientRecord(
        name="bob",
        limits=Limits(requests_per_minute=10),
        created_at=clock.now,
        revoked_at=None,
        token_prefix=token[:8],
        period_spend_usd=0.0,
    )
    clock.advance(1)
    await accounts.create("alice", Limits(max_in_flight=3))
    assert [c.name for c in await accounts.list()] == ["alice", "bob"]
    assert await accounts.get("bob") == record_
    new_limits = Limits(tokens_per_minute=1000, budget_usd=5.0, budget_period="day", max_in_flight=2)
    assert (await accounts.update("bob", new_limits)).limits == new_limits
    assert (await accounts.get("bob")).limits == new_limits
    clock.advance(1)
    revoked = await accounts.revoke("bob")
    assert revoked.revoked_at == clock.now
    assert [c.name for c in await accounts.list()] == ["alice"]
    assert [c.name for c in await accounts.list(include_revoked=True)] == ["alice", "bob"]
    assert (await accounts.get("bob")).revoked_at == clock.now
    await accounts.revoke("alice")
    assert accounts.enabled  # only revoked clients: still closed, never reopened by a revoke


async def test_not_found_duplicate_and_invalid(accounts: Accounts) -> None:
    assert (await error_of(accounts.update("nobody", Limits()))).reason is Reason.CLIENT_NOT_FOUND
    assert (await error_of(accounts.revoke("nobody"))).reason is Reason.CLIENT_NOT_FOUND
    assert (await error_of(accounts.get("nobody"))).reason is Reason.CLIENT_NOT_FOUND
    assert (await error_of(accounts.usage("nobody"))).reason is Reason.CLIENT_NOT_FOUND
    await accounts.create("bob", Limits())
    assert (await error_of(accounts.create("bob", Limits()))).reason is Reason.CLIENT_EXISTS
    await accounts.revoke("bob")
    assert (await error_of(accounts.revoke("bob"))).reason is Reason.CLIENT_NOT_FOUND
    assert (await error_of(accounts.update("bob", Limits()))).reason is Reason.CLIENT_NOT_FOUND
    # A revoked client keeps its name (its usage is filed under it).
    assert (await error_of(accounts.create("bob", Limits()))).reason is Reason.CLIENT_EXISTS
    err = await error_of(accounts.create("", Limits(requests_per_minute=0)))
    assert [v.field for v in err.field_violations] == ["name", "limits.requests_per_minute"]
    err = await error_of(accounts.update("bob", Limits(max_in_flight=0)))
    assert [v.field for v in err.field_violations] == ["limits.max_in_flight"]


async def test_authenticate(accounts: Accounts) -> None:
    _, bob_token = await accounts.create("bob", Limits())
    _, alice_token = await accounts.create("alice", Limits())
    bob = await accounts.authenticate(bob_token)
    assert bob is not None and bob.name == "bob"
    alice = await accounts.authenticate(alice_token)
    assert alice is not None and alice.name == "alice"
    for wrong in ["", bob_token[:-1], bob_token + "x", bob_token.upper(), "gptk_" + "A" * 43, "x" * 10_000]:
        assert await accounts.authenticate(wrong) is None
    await accounts.revoke("bob")
    assert await accounts.authenticate(bob_token) is None  # at once
    assert await accounts.authenticate(alice_token) is not None
    assert bob is not None
    # A call of a revoked client that was already authenticated is refused at admission.
    limited = ClientRow(bob.name, bob.token_hash, bob.token_prefix, Limits(requests_per_minute=5), bob.created_at)
    assert (await error_of(accounts.admit(limited, NO_ESTIMATE))).reason is Reason.CLIENT_TOKEN_INVALID


# ----------------------------------------------------------------- rate limits


async def test_request_rate_limit(accounts: Accounts, clock: Clock) -> None:
    await accounts.create("bob", Limits(requests_per_minute=3))
    await accounts.create("alice", Limits(requests_per_minute=3))
    start = clock.now
    for _ in range(3):
        await admit(accounts, "bob")
        clock.advance(10)
    err = await refused(accounts, "bob")  # 30 s after the first: it leaves the window in 30 s
    assert err.reason is Reason.CLIENT_RATE_LIMITED
    assert err.retry_after == pytest.approx(30.0)
    clock.advance(5)
    assert (await refused(accounts, "bob")).retry_after == pytest.approx(25.0)  # refusals are not counted
    await admit(accounts, "alice")  # another client is unaffected
    clock.now = start + 60  # the first leaves the window
    await admit(accounts, "bob")
    assert (await refused(accounts, "bob")).retry_after == pytest.approx(10.0)
    clock.advance(10)
    await admit(accounts, "bob")


async def test_request_rate_limit_change_takes_effect(accounts: Accounts, clock: Clock) -> None:
    await accounts.create("bob", Limits(requests_per_minute=5))
    for _ in range(4):
        await admit(accounts, "bob")
        clock.advance(1)
    await accounts.update("bob", Limits(requests_per_minute=2))
    # 4 in the window, limit 2: three must leave; the third (at +2) leaves at +62.
    assert (await refused(accounts, "bob")).retry_after == pytest.approx(58.0)


async def test_token_rate_limit_with_reservations(accounts: Accounts, clock: Clock) -> None:
    await accounts.create("bob", Limits(tokens_per_minute=1000))
    start = clock.now
    first = await admit(accounts, "bob", Estimate(tokens=500))
    await record(accounts, "bob", "gpt-4.1", Usage(300, 100, 400), 0.0, ticket=first)  # settles to 400
    clock.advance(20)
    second = await admit(accounts, "bob", Estimate(tokens=600))
    clock.advance(5)
    # 400 used + 600 reserved: full, even before the second call ends.
    err = await refused(accounts, "bob", Estimate(tokens=1))
    assert err.reason is Reason.CLIENT_RATE_LIMITED and "tokens per minute" in err.message
    assert err.retry_after == pytest.approx(36.0)  # the first's slot (ends at +1) leaves the window at +61
    await record(accounts, "bob", "gpt-4.1", Usage(100, 100, 200), 0.0, ticket=second)  # 400 of 600 given back
    await admit(accounts, "bob", Estimate(tokens=400))  # 400 + 200 + 400 = 1000
    err = await refused(accounts, "bob", Estimate(tokens=1))
    clock.now = start + 61
    await admit(accounts, "bob", Estimate(tokens=400))
    # A call that alone may exceed the limit can never run: refused as invalid, no wait offered.
    big = await error_of(accounts.admit((await accounts.store.get_client("bob")), Estimate(tokens=1001)))  # type: ignore[arg-type]
    assert big.reason is Reason.INVALID_REQUEST and [v.field for v in big.field_violations] == ["max_tokens"]


async def test_both_limits_wait_for_the_later(accounts: Accounts, clock: Clock) -> None:
    await accounts.create("bob", Limits(requests_per_minute=2, tokens_per_minute=100))
    await admit(accounts, "bob")
    clock.advance(10)
    await admit(accounts, "bob")
    clock.advance(10)
    await record(accounts, "bob", "m", Usage(total_tokens=100), None)
    err = await refused(accounts, "bob")
    assert "requests per minute and 100 tokens per minute" in err.message
    assert err.retry_after == pytest.approx(60.0)  # the tokens' slot (+20..+21) leaves at +81: 61 s, capped


# --------------------------------------------------------------------- budgets


async def test_daily_budget(accounts: Accounts, clock: Clock) -> None:
    await accounts.create("bob", Limits(budget_usd=5.0, budget_period="day"))
    await accounts.create("alice", Limits(budget_usd=5.0, budget_period="day"))
    for cost in (3.0, 1.99, 0.02):
        await admit(accounts, "bob")
        await record(accounts, "bob", "gpt-4.1", Usage(10, 10, 20), cost)
    assert (await accounts.get("bob")).period_spend_usd == pytest.approx(5.01)
    err = await refused(accounts, "bob")
    assert err.reason is Reason.CLIENT_BUDGET_EXCEEDED and err.retry_after is None
    assert err.quota_violations == (
        ("client:bob", "daily budget of $5.00 used: $5.01 spent or reserved since 2026-11-26T00:00Z"),
    )
    assert "2026-11-27T00:00Z" in err.message
    await admit(accounts, "alice")  # another client is unaffected
    clock.now = ts("2026-11-26T23:59:59")
    assert (await refused(accounts, "bob")).reason is Reason.CLIENT_BUDGET_EXCEEDED
    clock.now = ts("2026-11-27T00:00:00")  # next UTC day
    await admit(accounts, "bob")
    assert (await accounts.get("bob")).period_spend_usd == 0.0
    await record(accounts, "bob", "gpt-4.1", None, 6.0, ok=False)
    assert (await refused(accounts, "bob")).reason is Reason.CLIENT_BUDGET_EXCEEDED
    await accounts.update("bob", Limits(budget_usd=10.0, budget_period="day"))  # raised: through at once
    await admit(accounts, "bob")


async def test_budget_reservations_hold_concurrent_calls(accounts: Accounts) -> None:
    await accounts.create("bob", Limits(budget_usd=1.0, budget_period="day"))
    tickets = [await admit(accounts, "bob", Estimate(cost_usd=0.3)) for _ in range(3)]
    err = await refused(accounts, "bob", Estimate(cost_usd=0.3))  # 0.9 reserved + 0.3 > 1.0
    assert err.reason is Reason.CLIENT_BUDGET_EXCEEDED and "calls in flight" in err.message
    assert (await accounts.get("bob")).period_spend_usd == pytest.approx(0.9)
    await record(accounts, "bob", "m", Usage(1, 1, 2), 0.1, ticket=tickets[0])  # settled below its estimate
    assert (await accounts.get("bob")).period_spend_usd == pytest.approx(0.7)
    await admit(accounts, "bob", Estimate(cost_usd=0.3))
    big = await error_of(accounts.admit((await accounts.store.get_client("bob")), Estimate(cost_usd=1.5)))  # type: ignore[arg-type]
    assert big.reason is Reason.INVALID_REQUEST


async def test_zero_budget_and_budget_before_rate(accounts: Accounts) -> None:
    await accounts.create("bob", Limits(budget_usd=0.0, budget_period="month"))
    err = await refused(accounts, "bob")
    assert err.quota_violations == (
        ("client:bob", "monthly budget of $0.00 used: $0.00 spent or reserved since 2026-11-01T00:00Z"),
    )
    await accounts.create("carol", Limits(requests_per_minute=1, budget_usd=1.0, budget_period="day"))
    await admit(accounts, "carol")
    await record(accounts, "carol", "m", None, 2.0)
    assert (await refused(accounts, "carol")).reason is Reason.CLIENT_BUDGET_EXCEEDED


async def test_monthly_budget_across_month_boundary(accounts: Accounts, clock: Clock) -> None:
    clock.now = ts("2026-12-30T10:00:00")
    await accounts.create("bob", Limits(budget_usd=10.0, budget_period="month"))
    await accounts.create("daily", Limits(budget_usd=10.0, budget_period="day"))
    await record(accounts, "bob", "m", None, 6.0)
    await record(accounts, "daily", "m", None, 6.0)
    clock.now = ts("2026-12-31T23:00:00")  # another day, same month
    await record(accounts, "bob", "m", None, 4.5)
    await record(accounts, "daily", "m", None, 4.5)
    await admit(accounts, "daily")  # the daily budget reset: $4.50 today
    err = await refused(accounts, "bob")
    assert err.quota_violations[0][1].startswith("monthly budget of $10.00 used: $10.50")
    assert (await accounts.get("daily")).period_spend_usd == pytest.approx(4.5)
    clock.now = ts("2027-01-01T00:00:00")
    await admit(accounts, "bob")
    assert (await accounts.get("bob")).period_spend_usd == 0.0


# ------------------------------------------------------------- calls in flight


async def test_max_in_flight(accounts: Accounts) -> None:
    await accounts.create("bob", Limits(max_in_flight=2))
    await accounts.create("alice", Limits(max_in_flight=1))
    first = await admit(accounts, "bob")
    await admit(accounts, "bob")
    err = await refused(accounts, "bob")
    assert err.reason is Reason.CLIENT_IN_FLIGHT_LIMITED and err.retry_after is not None
    await admit(accounts, "alice")  # a share each
    await record(accounts, "bob", "m", Usage(1, 1, 2), None, ticket=first)
    await admit(accounts, "bob")  # the ended call's slot is free again


# ----------------------------------------------------------------------- usage


async def test_usage_per_model_per_client_and_all_traffic(accounts: Accounts, clock: Clock) -> None:
    created = clock.now
    await accounts.create("bob", Limits())
    await accounts.create("alice", Limits())
    await record(accounts, "bob", "gpt-4.1", Usage(100, 20, 120, cached_prompt_tokens=50), 0.25)
    await record(accounts, "bob", "gpt-4.1", Usage(10, 5, 15, reasoning_tokens=3), 0.75)
    await record(accounts, "bob", "gpt-4.1", None, None, ok=False)
    await record(accounts, "bob", "aaa-model", Usage(1, 1, 2), None)
    await record(accounts, "alice", "gpt-4.1", Usage(1000, 1000, 2000), 9.0)
    await record(accounts, None, "gpt-4.1", Usage(1, 1, 2), 1.0)  # no client token
    models, total, since = await accounts.usage("bob")
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
    assert (total.requests, total.failed_requests, total.cost_usd) == (3, 1, 1.0)
    all_models, all_total, all_since = await accounts.all_usage()
    assert [m.model for m in all_models] == ["aaa-model", "gpt-4.1"]
    assert (all_total.requests, all_total.prompt_tokens, all_total.cost_usd) == (5, 1112, pytest.approx(11.0))
    assert all_since <= created
    await accounts.revoke("bob")
    assert (await accounts.usage("bob"))[0] == models  # usage stays


# -------------------------------------------------------------------- settings


async def test_settings_record_compare_and_set(store: Store) -> None:
    assert await store.load_settings() is None
    assert await store.save_settings(SettingsDoc(2, b'{"a": 1}'), expected_generation=0)
    assert not await store.save_settings(SettingsDoc(2, b'{"a": 2}'), expected_generation=0)  # lost the race
    assert await store.load_settings() == SettingsDoc(2, b'{"a": 1}')
    assert await store.save_settings(SettingsDoc(3, b'{"a": 3}'), expected_generation=2)
    assert await store.load_settings() == SettingsDoc(3, b'{"a": 3}')


# -------------------------------------------------------------------- conversations


def conversation(clock: Clock, owner: str = "bob", n: int = 0, ttl: float = 3600.0) -> Conversation:
    now = clock() + n * 0.001  # distinct creation times, in creation order
    return Conversation(
        id=f"conv_{n:032d}",
        owner=owner,
        model="gpt-4o-mini",
        system_message="Be brief.",
        max_context_tokens=None,
        context_limit=128_000,
        policy=Policy.TRIM_OLDEST,
        labels={"team": "a"},
        created_at=now,
        updated_at=now,
        expires_at=now + ttl,
        ttl_seconds=ttl,
        context_tokens=10,
    )


def said(role: str, text: str, tokens: int = 5) -> Counted:
    return Counted({"role": role, "content": text}, tokens)


async def test_conversation_create_get_list_delete(store: Store, clock: Clock) -> None:
    made = [conversation(clock, "bob", n) for n in range(5)] + [conversation(clock, "carol", 9)]
    for c in made:
        await store.create_conversation(c)
    got = await store.get_conversation(made[0].id, messages=True)
    assert got == (made[0], [])
    assert await store.get_conversation("conv_" + "x" * 32) is None
    # Newest first, page by page, one owner or all of them.
    first = await store.list_conversations("bob", None, 2)
    assert [c.id for c in first] == [made[4].id, made[3].id]
    rest = await store.list_conversations("bob", first[-1].list_key, 10)
    assert [c.id for c in rest] == [made[2].id, made[1].id, made[0].id]
    assert [c.id for c in await store.list_conversations(ANY_OWNER, None, 2)] == [made[5].id, made[4].id]
    assert await store.list_conversations("dave", None, 10) == []
    assert await store.delete_conversation(made[2])
    assert not await store.delete_conversation(made[2])
    assert await store.get_conversation(made[2].id) is None
    assert [c.id for c in await store.list_conversations("bob", None, 10)] == [
        made[4].id,
        made[3].id,
        made[1].id,
        made[0].id,
    ]


async def test_conversation_lease_is_exclusive_and_owned(store: Store, clock: Clock) -> None:
    c = conversation(clock)
    await store.create_conversation(c)
    assert await store.lease_conversation(c.id, "bob", "t1", 30) is Lease.TAKEN
    assert await store.lease_conversation(c.id, "bob", "t2", 30) is Lease.BUSY
    assert await store.lease_conversation(c.id, "carol", "t3", 30) is Lease.MISSING  # another client's
    assert await store.lease_conversation("conv_" + "y" * 32, "bob", "t3", 30) is Lease.MISSING
    assert await store.renew_lease(c.id, "t1", 30)
    assert not await store.renew_lease(c.id, "t2", 30)
    await store.release_conversation(c.id, "t2")  # not the holder: nothing happens
    assert await store.lease_conversation(c.id, ANY_OWNER, "t2", 30) is Lease.BUSY
    await store.release_conversation(c.id, "t1")
    assert await store.lease_conversation(c.id, ANY_OWNER, "t2", 0.2) is Lease.TAKEN
    # A lease its holder stopped renewing (a replica that died) runs out.
    clock.advance(1)
    await asyncio.sleep(0.3)
    assert not await store.renew_lease(c.id, "t2", 30)
    assert await store.lease_conversation(c.id, "bob", "t4", 30) is Lease.TAKEN


async def test_conversation_turns_append_only_under_the_lease_and_version(store: Store, clock: Clock) -> None:
    c = conversation(clock)
    await store.create_conversation(c)
    turn = [said("user", "hi"), said("assistant", "Echo: hi")]
    after = replace(c, version=1, message_count=2, context_tokens=20, updated_at=clock() + 1, expires_at=clock() + 99)
    # Without the lease: nothing is appended.
    assert await store.append_turn(after, "t1", 0, turn) is Appended.LOST
    assert await store.lease_conversation(c.id, "bob", "t1", 30) is Lease.TAKEN
    assert await store.append_turn(after, "t1", 5, turn) is Appended.LOST  # the version moved on
    assert await store.get_conversation(c.id, messages=True) == (c, [])
    assert await store.append_turn(after, "t1", 0, turn) is Appended.DONE
    assert await store.get_conversation(c.id, messages=True) == (after, turn)
    # The append released the lease; the next turn appends after the first.
    assert await store.lease_conversation(c.id, "bob", "t2", 30) is Lease.TAKEN
    second = [Counted({"role": "user", "content": "é" * 3}, 2), said("assistant", "")]
    later = replace(after, version=2, message_count=4)
    assert await store.append_turn(later, "t2", 1, second) is Appended.DONE
    got = await store.get_conversation(c.id, messages=True)
    assert got is not None and got[1] == turn + second and got[0].version == 2
    await store.delete_conversation(later)
    assert await store.append_turn(replace(later, version=3), "t2", 2, turn) is Appended.MISSING


async def test_conversations_expire(store: Store, clock: Clock) -> None:
    short, long = conversation(clock, n=1, ttl=10), conversation(clock, n=2, ttl=1000)
    await store.create_conversation(short)
    await store.create_conversation(long)
    clock.advance(11)
    assert await store.get_conversation(short.id) is None
    assert await store.lease_conversation(short.id, "bob", "t", 30) is Lease.MISSING
    assert [c.id for c in await store.list_conversations("bob", None, 10)] == [long.id]
    assert await store.purge_conversations() == 1
    assert await store.purge_conversations() == 0
    assert [c.id for c in await store.list_conversations(ANY_OWNER, None, 10)] == [long.id]
    # A turn moves the expiry on.
    assert await store.lease_conversation(long.id, "bob", "t", 30) is Lease.TAKEN
    moved = replace(long, version=1, message_count=1, expires_at=clock() + 5000)
    assert await store.append_turn(moved, "t", 0, [said("user", "x")]) is Appended.DONE
    clock.advance(2000)
    assert (await store.get_conversation(long.id)) is not None
    assert await store.purge_conversations() == 0


async def test_sqlite_conversations_survive_a_restart(tmp_path: Any, clock: Clock) -> None:
    path = tmp_path / "gateway.db"
    first = SqliteStore(path, clock=clock)
    await first.open()
    c = conversation(clock)
    await first.create_conversation(c)
    assert await first.lease_conversation(c.id, "bob", "t", 30) is Lease.TAKEN
    after = replace(c, version=1, message_count=1)
    assert await first.append_turn(after, "t", 0, [said("user", "remember me")]) is Appended.DONE
    await first.close()
    second = SqliteStore(path, clock=clock)
    await second.open()
    try:
        assert await second.get_conversation(c.id, messages=True) == (after, [said("user", "remember me")])
    finally:
        await second.close()


async def test_sqlite_store_of_schema_2_gains_the_conversation_tables(tmp_path: Any, clock: Clock) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for script in (sqlite_module._SCHEMA_V1, sqlite_module._SCHEMA_V2):
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO clients (name, token_sha256, token_prefix, created_at) VALUES ('bob', x'01', 'gptk_', 1)")
    conn.commit()
    conn.close()
    store = SqliteStore(path, clock=clock)
    await store.open()
    try:
        assert (await store.get_client("bob")) is not None
        await store.create_conversation(conversation(clock))
        assert len(await store.list_conversations("bob", None, 10)) == 1
    finally:
        await store.close()


async def test_two_redis_stores_share_conversations_and_their_leases(redis_url: str, clock: Clock) -> None:
    a, b = RedisStore(redis_url, clock=clock), RedisStore(redis_url, clock=clock)
    await a.open()
    await b.open()
    try:
        c = conversation(clock)
        await a.create_conversation(c)
        assert await a.lease_conversation(c.id, "bob", "on-a", 30) is Lease.TAKEN
        assert await b.lease_conversation(c.id, "bob", "on-b", 30) is Lease.BUSY  # held on another replica
        after = replace(c, version=1, message_count=1)
        assert await b.append_turn(after, "on-b", 0, [said("user", "x")]) is Appended.LOST
        assert await a.append_turn(after, "on-a", 0, [said("user", "x")]) is Appended.DONE
        assert await b.get_conversation(c.id, messages=True) == (after, [said("user", "x")])
    finally:
        await a.close()
        await b.close()


# ------------------------------------------------------ two processes, one Redis


async def test_two_redis_stores_share_clients_windows_and_settings(redis_url: str, clock: Clock) -> None:
    a, b = RedisStore(redis_url, clock=clock), RedisStore(redis_url, clock=clock)
    await a.open()
    await b.open()
    try:
        on_a, on_b = Accounts(a, clock=clock), Accounts(b, clock=clock)
        _, token = await on_a.create("bob", Limits(requests_per_minute=2))
        row = await on_b.authenticate(token)  # created a moment ago elsewhere: found in the store
        assert row is not None and row.name == "bob"
        await admit(on_a, "bob")
        await admit(on_b, "bob")
        assert (await refused(on_a, "bob")).reason is Reason.CLIENT_RATE_LIMITED  # one window for both
        heard: list[SettingsDoc] = []
        b.on_settings(heard.append)
        assert await a.save_settings(SettingsDoc(5, b"{}"), expected_generation=0)
        async with asyncio.timeout(5):
            while not heard:
                await asyncio.sleep(0.02)
        assert heard == [SettingsDoc(5, b"{}")]
        await on_a.revoke("bob")
        async with asyncio.timeout(5):
            while b.has_clients and (await b.find_token(row.token_hash)) is not None:
                await asyncio.sleep(0.02)
    finally:
        await a.close()
        await b.close()


async def test_unreachable_redis_at_start_is_a_clear_error(clock: Clock) -> None:
    from gpt_grpc.store.base import StoreError
    from tests.redis_server import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", clock=clock, start_wait=0.5)
    with pytest.raises(StoreError, match=r"cannot reach Redis at redis://127\.0\.0\.1:"):
        await store.open()


async def test_admission_is_one_round_trip_and_settles_are_batched(redis_url: str, clock: Clock) -> None:
    store = RedisStore(redis_url, clock=clock)
    await store.open()
    try:
        acc = Accounts(store, clock=clock)
        await acc.create("bob", Limits(requests_per_minute=1000, tokens_per_minute=10**6, max_in_flight=100))
        row = await acc.authenticate((await acc.create("carol", Limits(requests_per_minute=1000)))[1])
        assert row is not None
        before = store.trips.copy()
        tickets = [await acc.admit(row, Estimate(tokens=10)) for _ in range(20)]
        # One script per admission; the rest, if any, is the background watcher (poll every 0.5 s).
        during = store.trips - before
        assert during["admit"] == 20 and set(during) <= {"admit", "poll", "clients"}
        before = store.trips.copy()
        for ticket in tickets:
            acc.record("carol", "m", Usage(1, 1, 2), 0.001, True, ticket)
        assert store.trips["batch"] == before["batch"]  # settling never waits on the store
        await store.flush()
        assert store.trips["batch"] - before["batch"] == 1  # 20 settles, one batch
        assert (await acc.usage("carol"))[1].requests == 20
    finally:
        await store.close()


async def test_admission_survives_a_script_flush(redis_url: str, clock: Clock) -> None:
    # A Redis restarted (or SCRIPT FLUSH) forgets the admission script: the next EVALSHA is NOSCRIPT,
    # and that admission loads it again instead of failing or counting the store unreachable.
    store = RedisStore(redis_url, clock=clock)
    await store.open()
    try:
        acc = Accounts(store, clock=clock)
        row = await acc.authenticate((await acc.create("dave", Limits(requests_per_minute=1000)))[1])
        assert row is not None
        await acc.admit(row, Estimate(tokens=10))
        flushed = aioredis.Redis.from_url(redis_url)
        await flushed.script_flush()
        await flushed.aclose()
        assert await acc.admit(row, Estimate(tokens=10)) is not None
        assert await acc.admit(row, Estimate(tokens=10)) is not None
        assert not store.degraded
    finally:
        await store.close()


async def test_a_hung_redis_is_degraded_mode_within_the_command_timeout(clock: Clock) -> None:
    # SIGSTOP: the sockets stay open and nothing answers. An admission waits at most the command
    # timeout (the pipelined connection's watchdog), then this replica serves on its own limits;
    # when Redis answers again, admissions go through it again.
    server = RedisServer()
    server.start()
    store = RedisStore(server.url, clock=clock)
    await store.open()
    try:
        acc = Accounts(store, clock=clock)
        row = await acc.authenticate((await acc.create("erin", Limits(requests_per_minute=1000)))[1])
        assert row is not None
        ticket = await acc.admit(row, Estimate(tokens=10))
        assert ticket is not None and not ticket.local
        server.pause()
        started = time.monotonic()
        ticket = await acc.admit(row, Estimate(tokens=10))
        waited = time.monotonic() - started
        assert ticket is not None and ticket.local and store.degraded
        assert waited < COMMAND_TIMEOUT_SECONDS * 2.5, waited
        server.resume()
        deadline = time.monotonic() + 10
        while store.degraded and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not store.degraded
        ticket = await acc.admit(row, Estimate(tokens=10))
        assert ticket is not None and not ticket.local
    finally:
        server.resume()
        await store.close()
        server.stop()
