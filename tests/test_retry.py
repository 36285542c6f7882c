"""Retry rules with time faked: attempts, waits, Retry-After, deadlines, budget."""

from __future__ import annotations

import pytest

from gpt_grpc.errors import GatewayError, Reason
from gpt_grpc.retry import RetryBudget, RetryPolicy, call_with_retries


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(*reasons: Reason, retry_after: float | None = None):
    """An attempt function failing with these reasons in turn, then succeeding."""
    calls: list[int] = []

    async def attempt(n: int) -> str:
        calls.append(n)
        if len(calls) <= len(reasons):
            raise GatewayError(reasons[len(calls) - 1], "boom", retry_after=retry_after)
        return "ok"

    return attempt, calls


@pytest.mark.parametrize(
    ("reason", "retried"),
    [
        (Reason.UPSTREAM_RATE_LIMITED, True),
        (Reason.UPSTREAM_UNAVAILABLE, True),
        (Reason.UPSTREAM_TIMEOUT, True),
        (Reason.UPSTREAM_CONFLICT, True),
        (Reason.UPSTREAM_RESPONSE_INVALID, True),
        (Reason.UPSTREAM_QUOTA_EXCEEDED, False),
        (Reason.UPSTREAM_BAD_REQUEST, False),
        (Reason.UPSTREAM_AUTHENTICATION_FAILED, False),
        (Reason.UPSTREAM_PERMISSION_DENIED, False),
        (Reason.UPSTREAM_NOT_FOUND, False),
        (Reason.UPSTREAM_CONTEXT_LENGTH_EXCEEDED, False),
        (Reason.INVALID_REQUEST, False),
    ],
)
async def test_which_reasons_are_retried(reason: Reason, retried: bool) -> None:
    t = FakeTime()
    attempt, calls = failing(reason)
    if retried:
        result, attempts = await call_with_retries(attempt, RetryPolicy(3, 0.5, 8), clock=t.clock, sleep=t.sleep)
        assert (result, attempts, calls) == ("ok", 2, [1, 2])
    else:
        with pytest.raises(GatewayError) as info:
            await call_with_retries(attempt, RetryPolicy(3, 0.5, 8), clock=t.clock, sleep=t.sleep)
        assert info.value.reason is reason
        assert info.value.attempts == 1
        assert calls == [1]
        assert t.sleeps == []


@pytest.mark.parametrize(
    ("policy", "expected_caps"),
    [
        (RetryPolicy(5, 0.5, 8.0), [0.5, 1.0, 2.0, 4.0]),
        (RetryPolicy(5, 1.0, 3.0), [1.0, 2.0, 3.0, 3.0]),
        (RetryPolicy(2, 0.1, 1.0), [0.1]),
    ],
)
async def test_full_jitter_backoff_is_capped_exponential(policy: RetryPolicy, expected_caps: list[float]) -> None:
    t = FakeTime()
    attempt, calls = failing(*[Reason.UPSTREAM_UNAVAILABLE] * 10)
    # rng() == 1.0 shows the cap itself; full jitter draws uniformly below it.
    with pytest.raises(GatewayError) as info:
        await call_with_retries(attempt, policy, clock=t.clock, sleep=t.sleep, rng=lambda: 1.0)
    assert t.sleeps == pytest.approx(expected_caps)
    assert info.value.attempts == policy.max_attempts == len(calls)


async def test_jitter_draws_below_the_cap() -> None:
    t = FakeTime()
    attempt, _ = failing(Reason.UPSTREAM_UNAVAILABLE, Reason.UPSTREAM_UNAVAILABLE)
    draws = iter([0.25, 0.5])
    await call_with_retries(attempt, RetryPolicy(3, 1.0, 8), clock=t.clock, sleep=t.sleep, rng=lambda: next(draws))
    assert t.sleeps == pytest.approx([0.25, 1.0])


async def test_retry_after_replaces_backoff() -> None:
    t = FakeTime()
    attempt, _ = failing(Reason.UPSTREAM_RATE_LIMITED, retry_after=2.5)
    result, attempts = await call_with_retries(
        attempt, RetryPolicy(3, 0.1, 0.2), clock=t.clock, sleep=t.sleep, rng=lambda: 1.0
    )
    assert (result, attempts) == ("ok", 2)
    assert t.sleeps == [2.5]


async def test_never_sleeps_past_the_deadline() -> None:
    t = FakeTime()
    attempt, calls = failing(Reason.UPSTREAM_RATE_LIMITED, retry_after=5.0)
    with pytest.raises(GatewayError) as info:
        await call_with_retries(attempt, RetryPolicy(3, 0.1, 1), deadline=t.now + 2.0, clock=t.clock, sleep=t.sleep)
    assert info.value.reason is Reason.UPSTREAM_RATE_LIMITED
    assert t.sleeps == []  # the wait would end after the deadline: report now
    assert calls == [1]


async def test_retries_while_the_deadline_allows() -> None:
    t = FakeTime()
    attempt, calls = failing(Reason.UPSTREAM_UNAVAILABLE, Reason.UPSTREAM_UNAVAILABLE, Reason.UPSTREAM_UNAVAILABLE)
    with pytest.raises(GatewayError):
        await call_with_retries(
            attempt,
            RetryPolicy(10, 1.0, 1.0),
            deadline=t.now + 2.5,
            clock=t.clock,
            sleep=t.sleep,
            rng=lambda: 1.0,
        )
    assert t.sleeps == [1.0, 1.0]
    assert calls == [1, 2, 3]


async def test_cancellation_is_not_retried() -> None:
    import asyncio

    t = FakeTime()
    calls = 0

    async def attempt(n: int) -> str:
        nonlocal calls
        calls += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await call_with_retries(attempt, RetryPolicy(3, 0.1, 1), clock=t.clock, sleep=t.sleep)
    assert calls == 1


def test_budget_allows_floor_plus_ratio_of_first_attempts() -> None:
    t = FakeTime()
    budget = RetryBudget(ratio=0.2, min_retries=10, window_seconds=10, clock=t.clock)
    for _ in range(100):
        budget.record_first_attempt()
    spent = sum(budget.try_spend() for _ in range(100))
    assert spent == 30  # 10 + 20% of 100
    assert budget.refused == 70


def test_budget_window_slides() -> None:
    t = FakeTime()
    budget = RetryBudget(ratio=0.0, min_retries=5, window_seconds=10, clock=t.clock)
    assert sum(budget.try_spend() for _ in range(10)) == 5
    t.now += 11  # the old retries fall out of the window
    assert sum(budget.try_spend() for _ in range(10)) == 5


async def test_budget_refusal_marks_the_error() -> None:
    t = FakeTime()
    budget = RetryBudget(ratio=0.0, min_retries=0, clock=t.clock)
    attempt, calls = failing(Reason.UPSTREAM_UNAVAILABLE)
    with pytest.raises(GatewayError) as info:
        await call_with_retries(attempt, RetryPolicy(3, 0.1, 1), budget=budget, clock=t.clock, sleep=t.sleep)
    assert info.value.retry_budget_exhausted
    assert calls == [1]
