"""Every retry rule of the gateway, in one place, on tenacity.

- Only `GatewayError`s whose reason is retryable are retried (errors.RETRYABLE).
- Backoff is exponential with full jitter, capped; an upstream `Retry-After`
  (already capped when parsed) replaces it.
- Never sleep past the caller's deadline: when the next wait would end after
  it, stop now and report the last error.
- A server-wide `RetryBudget` caps retries to a fraction of first attempts, so
  a dead upstream is not hammered harder by the gateway's own retries.
- With several upstreams, a `Failover` (the call's route, upstream/routing.py)
  says whether another attempt may follow - it may for a refused key or an
  exhausted quota too, when another upstream is left - and whether it goes to
  another upstream, which it does at once, without the backoff.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import tenacity
from tenacity import AsyncRetrying, RetryCallState

from .errors import GatewayError

T = TypeVar("T")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Below this much time left there is no point starting another attempt.
MIN_ATTEMPT_SECONDS = 0.005


class AttemptObserver(Protocol):
    """Told about every upstream attempt (metrics implement it)."""

    def attempt(self, outcome: str, seconds: float) -> None:
        """One attempt ended: outcome is "ok" or the failure reason."""

    def retry(self, reason: str) -> None:
        """Another attempt starts after a failure with this reason."""


class Failover(Protocol):
    """Where the next attempt of a call would go (the call's route)."""

    def goes_on(self, error: GatewayError) -> bool:
        """Whether an attempt may follow the one that failed with `error`."""

    def elsewhere(self) -> bool:
        """Whether that attempt goes to another upstream (or model) than the last one."""


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts and how long to wait between them."""

    max_attempts: int = 3
    initial_backoff: float = 0.5
    max_backoff: float = 8.0

    def backoff_cap(self, retry_number: int) -> float:
        """Upper bound of the jittered wait before retry `retry_number` (1-based)."""
        return min(self.max_backoff, self.initial_backoff * 2.0 ** (retry_number - 1))


class RetryBudget:
    """Retries allowed at most `ratio` x first attempts over a sliding window, plus a floor.

    Counts live in one-second buckets, so the cost is O(window) memory and O(1)
    per call. Single-threaded (the event loop); no lock needed.
    """

    def __init__(
        self,
        ratio: float = 0.2,
        min_retries: int = 10,
        window_seconds: int = 10,
        clock: Clock = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.min_retries = min_retries
        self.window = window_seconds
        self._clock = clock
        self._firsts = [0] * window_seconds
        self._retries = [0] * window_seconds
        self._stamp = [-1] * window_seconds
        self.refused = 0

    def _slot(self) -> int:
        second = int(self._clock())
        i = second % self.window
        if self._stamp[i] != second:
            self._stamp[i] = second
            self._firsts[i] = 0
            self._retries[i] = 0
        return i

    def _totals(self) -> tuple[int, int]:
        oldest = int(self._clock()) - self.window + 1
        firsts = retries = 0
        for i in range(self.window):
            if self._stamp[i] >= oldest:
                firsts += self._firsts[i]
                retries += self._retries[i]
        return firsts, retries

    def record_first_attempt(self) -> None:
        self._firsts[self._slot()] += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        firsts, retries = self._totals()
        if retries >= self.min_retries + self.ratio * firsts:
            self.refused += 1
            return False
        self._retries[self._slot()] += 1
        return True

    def state(self) -> tuple[int, int]:
        """(first attempts, retries) in the current window."""
        return self._totals()


class _Wait:
    def __init__(self, policy: RetryPolicy, rng: Callable[[], float], failover: Failover | None) -> None:
        self.policy = policy
        self.rng = rng
        self.failover = failover

    def __call__(self, state: RetryCallState) -> float:
        if self.failover is not None and self.failover.elsewhere():
            return 0.0  # another upstream: no reason to wait for this one
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, GatewayError) and exc.retry_after is not None:
            return exc.retry_after
        return self.rng() * self.policy.backoff_cap(state.attempt_number)


class _Stop:
    def __init__(
        self,
        policy: RetryPolicy,
        deadline: float | None,
        clock: Clock,
        budget: RetryBudget | None,
    ) -> None:
        self.policy = policy
        self.deadline = deadline
        self.clock = clock
        self.budget = budget

    def __call__(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self.policy.max_attempts:
            return True
        if self.deadline is not None:
            resume_at = self.clock() + state.upcoming_sleep
            if resume_at + MIN_ATTEMPT_SECONDS >= self.deadline:
                return True
        if self.budget is not None and not self.budget.try_spend():
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, GatewayError):
                exc.retry_budget_exhausted = True
            return True
        return False


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, GatewayError) and exc.retryable


def _retry_predicate(failover: Failover | None) -> Callable[[BaseException], bool]:
    if failover is None:
        return _retryable
    return lambda exc: isinstance(exc, GatewayError) and failover.goes_on(exc)


async def call_with_retries(
    attempt: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    *,
    deadline: float | None = None,
    budget: RetryBudget | None = None,
    clock: Clock = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    rng: Callable[[], float] = random.random,
    observer: AttemptObserver | None = None,
    failover: Failover | None = None,
) -> tuple[T, int]:
    """Run `attempt(n)` (n = 1, 2, ...) until it succeeds or the rules say stop.

    Returns (result, attempts). The last `GatewayError` is re-raised with its
    `attempts` set. Anything that is not a GatewayError (cancellation
    included) propagates at once.
    """
    if budget is not None:
        budget.record_first_attempt()
    predicate = _retry_predicate(failover)
    # The first attempt runs outside tenacity: almost every call succeeds at once, and
    # tenacity's machinery (its state, statistics and action chain) costs ~15 us a call.
    # A first failure that may be retried is handed to tenacity as its attempt 1, so every
    # rule below (stop, wait, budget, failover) decides exactly as it would have.
    first = await _attempt(attempt, 1, observer, "")
    if not isinstance(first, GatewayError):
        return first, 1
    if not predicate(first):
        raise first
    retrying = AsyncRetrying(
        sleep=sleep,
        stop=_Stop(policy, deadline, clock, budget),
        wait=_Wait(policy, rng, failover),
        retry=tenacity.retry_if_exception(predicate),
        reraise=True,
    )
    last_reason = first.reason.value
    async for state in retrying:
        with state:
            number = state.retry_state.attempt_number
            if number == 1:
                raise first
            outcome = await _attempt(attempt, number, observer, last_reason)
            if isinstance(outcome, GatewayError):
                last_reason = outcome.reason.value
                raise outcome
            return outcome, number
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover


async def _attempt(
    attempt: Callable[[int], Awaitable[T]], number: int, observer: AttemptObserver | None, last_reason: str
) -> T | GatewayError:
    """Attempt `number`: its result, or the GatewayError it failed with (its `attempts` set); observed."""
    if observer is not None and number > 1:
        observer.retry(last_reason)
    started = time.perf_counter()
    try:
        result = await attempt(number)
    except GatewayError as exc:
        exc.attempts = number
        if observer is not None:
            observer.attempt(exc.reason.value, time.perf_counter() - started)
        return exc
    if observer is not None:
        observer.attempt("ok", time.perf_counter() - started)
    return result
