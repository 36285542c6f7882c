"""Client limits: calls and tokens per minute, spend per budget period, calls in flight.

The policy, apart from where its state lives (store/): what a limit means,
what a call is expected to cost before it runs, which call is refused and
with what message. Both store backends decide with these functions; the
Redis backend's admission script mirrors `LocalLimiter.admit` step by step
(store/redis.py), and one test suite runs against both.

Reservations. Budgets and tokens-per-minute are checked before a call runs,
but its cost is known only at the end, so every admitted call *reserves* an
estimate (prompt tokens counted offline + max_tokens, or
DEFAULT_RESERVED_COMPLETION_TOKENS when the request sets none) against the
client's token window and its period spend, and the end of the call
*settles* it: the difference between the real usage and the estimate is
added. A call whose estimate would overrun what is left is refused, so 50
concurrent calls cannot spend 50 budgets: what can still overspend is only
a call that used more than it reserved (max_tokens unset and a longer
answer than the default), never the calls that were refused.

This module knows nothing of gRPC or of any database.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from . import tokens
from .chat import Usage
from .errors import FieldViolation, GatewayError, Reason, invalid
from .models import ModelRecord

WINDOW_SECONDS = 60.0
# Token windows are kept in slots of this many seconds: a client's window holds
# at most WINDOW_SECONDS / SLOT_SECONDS entries, in memory or in the store.
SLOT_SECONDS = 1.0
# Bounds of the proto's ClientLimits fields (int32 / int64).
MAX_REQUESTS_PER_MINUTE = 2**31 - 1
MAX_TOKENS_PER_MINUTE = 2**63 - 1
MAX_IN_FLIGHT = 2**31 - 1
# Completion tokens reserved for a call that sets no max_tokens (documented in the README).
DEFAULT_RESERVED_COMPLETION_TOKENS = 1024
# A call in flight holds its slot in a shared store for this long unless its
# replica renews it (every LEASE_SECONDS / 3): a replica killed mid-call gives
# its clients' slots back after at most this.
LEASE_SECONDS = 60.0
# Retry hint for a client at its max_in_flight: slots free as calls end.
IN_FLIGHT_RETRY_SECONDS = 1.0

Period = Literal["day", "month"]


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    budget_usd: float | None = None
    budget_period: Period | None = None  # required iff budget_usd is set
    max_in_flight: int | None = None

    @property
    def metered(self) -> bool:
        """Whether admission has anything to check (else a call needs no store round trip)."""
        return (
            self.requests_per_minute is not None
            or self.tokens_per_minute is not None
            or self.budget_usd is not None
            or self.max_in_flight is not None
        )

    @property
    def needs_estimate(self) -> bool:
        """Whether a call's tokens or cost must be estimated before it runs."""
        return self.tokens_per_minute is not None or self.budget_usd is not None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole(value: object, high: int) -> bool:
    return value is None or (_is_int(value) and 1 <= value <= high)  # type: ignore[operator]


def validate_limits(limits: Limits) -> list[FieldViolation]:
    """Every problem with `limits`, as field violations under "limits."."""
    out: list[FieldViolation] = []
    if not _whole(limits.requests_per_minute, MAX_REQUESTS_PER_MINUTE):
        out.append(
            FieldViolation("limits.requests_per_minute", f"must be a whole number from 1 to {MAX_REQUESTS_PER_MINUTE}")
        )
    if not _whole(limits.tokens_per_minute, MAX_TOKENS_PER_MINUTE):
        out.append(
            FieldViolation("limits.tokens_per_minute", f"must be a whole number from 1 to {MAX_TOKENS_PER_MINUTE}")
        )
    if not _whole(limits.max_in_flight, MAX_IN_FLIGHT):
        out.append(FieldViolation("limits.max_in_flight", f"must be a whole number from 1 to {MAX_IN_FLIGHT}"))
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


def usd(amount: float) -> str:
    if amount == 0 or abs(amount) >= 0.1:
        return f"${amount:,.2f}"
    return "$" + f"{amount:.6f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Periods:
    """The UTC day and month containing one instant, with their bounds."""

    day: str  # "2026-11-26"
    day_start: float
    day_end: float
    month: str  # "2026-11"
    month_start: float
    month_end: float

    @staticmethod
    def at(now: float) -> Periods:
        global _last_periods
        last = _last_periods
        if last is not None and last.contains(now):
            return last  # the same UTC day: every call of a day shares one (building one costs ~10 us)
        periods = Periods._build(now)
        _last_periods = periods
        return periods

    @staticmethod
    def _build(now: float) -> Periods:
        t = datetime.fromtimestamp(now, UTC)
        day0 = datetime(t.year, t.month, t.day, tzinfo=UTC)
        month0 = datetime(t.year, t.month, 1, tzinfo=UTC)
        month1 = (
            datetime(t.year + 1, 1, 1, tzinfo=UTC) if t.month == 12 else datetime(t.year, t.month + 1, 1, tzinfo=UTC)
        )
        return Periods(
            day=day0.strftime("%Y-%m-%d"),
            day_start=day0.timestamp(),
            day_end=day0.timestamp() + 86400.0,
            month=month0.strftime("%Y-%m"),
            month_start=month0.timestamp(),
            month_end=month1.timestamp(),
        )

    def contains(self, now: float) -> bool:
        return self.day_start <= now < self.day_end

    def label(self, period: Period | None) -> str:
        """The key of the budget period (the day when no budget is set)."""
        return self.month if period == "month" else self.day

    def bounds(self, period: Period | None) -> tuple[float, float]:
        return (self.month_start, self.month_end) if period == "month" else (self.day_start, self.day_end)


# The Periods of the last instant asked about (Periods.at): reused until its day ends.
_last_periods: Periods | None = None


# ------------------------------------------------------------------ estimates


@dataclass(frozen=True)
class FallbackPrice:
    """The operator's price for models without one (--unpriced-model-price IN,OUT in USD per million)."""

    input_usd_per_million: float
    output_usd_per_million: float

    @staticmethod
    def parse(text: str) -> FallbackPrice:
        parts = text.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ValueError(
                f"--unpriced-model-price must be INPUT,OUTPUT in USD per million tokens (e.g. 5,15), not {text!r}"
            ) from None
        if not (math.isfinite(low) and math.isfinite(high) and low >= 0 and high >= 0):
            raise ValueError("--unpriced-model-price must be two finite amounts of 0 or more")
        return FallbackPrice(low, high)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_usd_per_million + completion_tokens * self.output_usd_per_million) / 1e6


@dataclass(frozen=True)
class Estimate:
    """What a call may use at most, reserved at admission."""

    tokens: int = 0
    cost_usd: float = 0.0


NO_ESTIMATE = Estimate()


@dataclass(frozen=True)
class Pricer:
    """Prices a call before it runs (estimate) and, for a model without a price, after (the fallback)."""

    fallback: FallbackPrice | None = None
    default_completion_tokens: int = DEFAULT_RESERVED_COMPLETION_TOKENS

    def fallback_cost(self, usage: Usage) -> float | None:
        """The operator's price for a call whose model has none (None without a fallback)."""
        if self.fallback is None:
            return None
        return self.fallback.cost(usage.prompt_tokens, usage.completion_tokens)

    def estimate(self, client: str, limits: Limits, model: ModelRecord, body: Mapping[str, Any]) -> Estimate:
        """The tokens and cost one call of `client` reserves; raises CLIENT_MODEL_UNPRICED.

        `model` is the call's resolved record (encoding, price), `body` the upstream
        body (messages, tools, max_tokens or max_completion_tokens).
        """
        if not limits.needs_estimate:
            return NO_ESTIMATE
        messages = body.get("messages") or []
        # Images count as billed (an image by URL: the most it can cost, so a reservation never falls short).
        prompt = tokens.count_messages(
            messages, model.name, tools=body.get("tools"), encoding=model.encoding, image_billing=model.image_tokens
        ).tokens
        asked = body.get("max_tokens") or body.get("max_completion_tokens")
        completion: int = asked if isinstance(asked, int) and asked > 0 else self.default_completion_tokens
        cost = 0.0
        if limits.budget_usd is not None:
            if model.price is not None:
                cost = model.price.cost_usd(prompt, completion)
            elif self.fallback is not None:
                cost = self.fallback.cost(prompt, completion)
            else:
                raise GatewayError(
                    Reason.CLIENT_MODEL_UNPRICED,
                    f"client {client!r} has a budget and model {model.name[:64]!r} has no known price, so its "
                    "spend cannot be counted; call a priced model, or have the operator set --unpriced-model-price",
                )
        return Estimate(tokens=prompt + completion, cost_usd=cost)


# ------------------------------------------------------------------- refusals


def budget_refusal(name: str, limits: Limits, spend: float, periods: Periods, estimate: float = 0.0) -> GatewayError:
    """CLIENT_BUDGET_EXCEEDED: `spend` (spent and reserved) plus `estimate` is over the budget."""
    budget = limits.budget_usd or 0.0
    label = "monthly" if limits.budget_period == "month" else "daily"
    start, end = periods.bounds(limits.budget_period)
    since = datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%MZ")
    resets = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%dT%H:%MZ")
    if spend >= budget:
        message = f"client {name!r} has used its {label} budget of {usd(budget)}; it resets at {resets}"
    else:
        message = (
            f"client {name!r} has {usd(budget - spend)} left of its {label} budget of {usd(budget)} (calls in "
            f"flight included) and this call may cost up to {usd(estimate)}; lower max_tokens, or wait for the "
            f"calls in flight or the reset at {resets}"
        )
    return GatewayError(
        Reason.CLIENT_BUDGET_EXCEEDED,
        message,
        quota_violations=[
            (f"client:{name}", f"{label} budget of {usd(budget)} used: {usd(spend)} spent or reserved since {since}")
        ],
    )


def rate_refusal(name: str, why: Sequence[str], wait: float) -> GatewayError:
    retry_after = min(max(wait, 0.001), WINDOW_SECONDS)
    return GatewayError(
        Reason.CLIENT_RATE_LIMITED,
        f"client {name!r} is over its limit of {' and '.join(why)}; retry in {retry_after:.1f}s",
        retry_after=retry_after,
    )


def in_flight_refusal(name: str, limit: int) -> GatewayError:
    return GatewayError(
        Reason.CLIENT_IN_FLIGHT_LIMITED,
        f"client {name!r} has its limit of {limit} calls in flight",
        retry_after=IN_FLIGHT_RETRY_SECONDS,
    )


def too_big(limits: Limits, estimate: Estimate) -> GatewayError | None:
    """INVALID_REQUEST when the call alone may use more than a whole limit: no wait would let it through."""
    if limits.tokens_per_minute is not None and estimate.tokens > limits.tokens_per_minute:
        return invalid(
            [
                FieldViolation(
                    "max_tokens",
                    f"the call may use {estimate.tokens} tokens (prompt + max_tokens), more than the client's "
                    f"limit of {limits.tokens_per_minute} tokens per minute; set max_tokens lower",
                )
            ]
        )
    if limits.budget_usd is not None and estimate.cost_usd > limits.budget_usd > 0:
        return invalid(
            [
                FieldViolation(
                    "max_tokens",
                    f"the call may cost up to {usd(estimate.cost_usd)}, more than the client's whole budget of "
                    f"{usd(limits.budget_usd)}; set max_tokens lower",
                )
            ]
        )
    return None


def window_wait(entries: Sequence[tuple[float, int]], total: int, limit: int, need: int, horizon: float) -> float:
    """Seconds until a window holding `entries` ((time, amount), oldest first, summing to `total`)
    has room for `need` more under `limit`. `horizon` is now - WINDOW_SECONDS."""
    remaining = total
    for at, amount in entries:
        remaining -= amount
        if remaining + need <= limit:
            return at - horizon
    return WINDOW_SECONDS


# -------------------------------------------------------------- local limiter


@dataclass(frozen=True)
class Ticket:
    """What one admitted call holds until it is settled."""

    id: str
    client: str
    estimate: Estimate
    at: float  # unix seconds of admission
    day: str
    month: str
    local: bool = True  # issued by a LocalLimiter (else by a shared store)


@dataclass
class _Window:
    """One client's limit state in memory."""

    day: str = ""
    day_spend: float = 0.0
    month: str = ""
    month_spend: float = 0.0
    requests: deque[float] = field(default_factory=deque)
    # [slot index, tokens], oldest slot first; a slot leaves the window when its end passes the horizon
    tokens: deque[list[int]] = field(default_factory=deque)
    tokens_sum: int = 0
    in_flight: int = 0


class LocalLimiter:
    """Every client's limits in this process's memory, under one lock.

    The whole admission path of the SQLite and in-memory stores, and the
    Redis store's fallback while Redis cannot be reached (limits are then
    enforced per replica).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._periods = Periods.at(clock())
        self._serial = 0

    def periods(self, now: float) -> Periods:
        if not self._periods.contains(now):
            self._periods = Periods.at(now)
        return self._periods

    def _window(self, name: str, now: float) -> tuple[_Window, Periods]:
        w = self._windows.get(name)
        if w is None:
            w = self._windows[name] = _Window()
        p = self.periods(now)
        if w.day != p.day:
            w.day, w.day_spend = p.day, 0.0
        if w.month != p.month:
            w.month, w.month_spend = p.month, 0.0
        return w, p

    def seed_spend(self, name: str, day: str, day_spend: float, month: str, month_spend: float) -> None:
        """Start from spend known elsewhere (the database, or the shared store before it went away)."""
        with self._lock:
            w, p = self._window(name, self._clock())
            if day == p.day:
                w.day_spend = max(w.day_spend, day_spend)
            if month == p.month:
                w.month_spend = max(w.month_spend, month_spend)

    def spend(self, name: str, period: Period | None) -> float:
        """Spent and reserved in the current `period` (the day when None)."""
        with self._lock:
            w, _ = self._window(name, self._clock())
            return w.month_spend if period == "month" else w.day_spend

    def forget(self, name: str, *, windows_only: bool = False) -> None:
        """Drop a client's rate windows (revoked, or its request limit removed)."""
        with self._lock:
            w = self._windows.get(name)
            if w is not None:
                w.requests.clear()
                if not windows_only:
                    w.tokens.clear()
                    w.tokens_sum = 0

    def admit(self, name: str, limits: Limits, estimate: Estimate, *, requests_only: bool = False) -> Ticket:
        """Reserve one call of `name`, or raise why not (a refused call reserves nothing).

        `requests_only`: held to the request rate alone, and holds nothing to settle.
        """
        if requests_only:
            limits = Limits(requests_per_minute=limits.requests_per_minute)
        now = self._clock()
        with self._lock:
            w, p = self._window(name, now)
            if limits.budget_usd is not None:
                spend = w.month_spend if limits.budget_period == "month" else w.day_spend
                if spend >= limits.budget_usd or spend + estimate.cost_usd > limits.budget_usd:
                    raise budget_refusal(name, limits, spend, p, estimate.cost_usd)
            horizon = now - WINDOW_SECONDS
            wait = 0.0
            why: list[str] = []
            rpm = limits.requests_per_minute
            if rpm is not None:
                while w.requests and w.requests[0] <= horizon:
                    w.requests.popleft()
                if len(w.requests) >= rpm:
                    # The (len - rpm + 1)th oldest must leave for a slot to free.
                    wait = max(wait, w.requests[len(w.requests) - rpm] - horizon)
                    why.append(f"{rpm} requests per minute")
            tpm = limits.tokens_per_minute
            if tpm is not None:
                self._expire_tokens(w, horizon)
                if w.tokens_sum >= tpm or w.tokens_sum + estimate.tokens > tpm:
                    entries = [((slot + 1) * SLOT_SECONDS, n) for slot, n in w.tokens]
                    wait = max(wait, window_wait(entries, w.tokens_sum, tpm, estimate.tokens, horizon))
                    why.append(f"{tpm} tokens per minute")
            if why:
                raise rate_refusal(name, why, wait)
            if limits.max_in_flight is not None and w.in_flight >= limits.max_in_flight:
                raise in_flight_refusal(name, limits.max_in_flight)
            if rpm is not None:
                w.requests.append(now)
            if estimate.tokens:
                self._add_tokens(w, now, estimate.tokens)
            self._serial += 1
            if requests_only:
                return Ticket(f"local-{self._serial}", name, NO_ESTIMATE, now, p.day, p.month, local=False)
            w.day_spend += estimate.cost_usd
            w.month_spend += estimate.cost_usd
            w.in_flight += 1
            return Ticket(f"local-{self._serial}", name, estimate, now, p.day, p.month)

    def settle(self, ticket: Ticket | None, name: str, tokens: int, cost_usd: float) -> None:
        """One call of `name` ended: replace its reservation (if any) by what it used."""
        now = self._clock()
        with self._lock:
            w, p = self._window(name, now)
            reserved = ticket.estimate if ticket is not None else NO_ESTIMATE
            if ticket is not None and ticket.local:
                w.in_flight = max(0, w.in_flight - 1)
            day_delta = cost_usd - (reserved.cost_usd if ticket is not None and ticket.day == p.day else 0.0)
            month_delta = cost_usd - (reserved.cost_usd if ticket is not None and ticket.month == p.month else 0.0)
            w.day_spend = max(0.0, w.day_spend + day_delta)
            w.month_spend = max(0.0, w.month_spend + month_delta)
            delta = tokens - reserved.tokens
            if delta:
                at = ticket.at if ticket is not None else now
                if at > now - WINDOW_SECONDS:
                    self._add_tokens(w, at, delta)

    @staticmethod
    def _expire_tokens(w: _Window, horizon: float) -> None:
        while w.tokens and (w.tokens[0][0] + 1) * SLOT_SECONDS <= horizon:
            w.tokens_sum -= w.tokens.popleft()[1]

    @staticmethod
    def _add_tokens(w: _Window, at: float, amount: int) -> None:
        slot = math.floor(at / SLOT_SECONDS)
        for i in range(len(w.tokens) - 1, -1, -1):
            entry = w.tokens[i]
            if entry[0] == slot:
                entry[1] += amount
                break
            if entry[0] < slot:
                w.tokens.insert(i + 1, [slot, amount])
                break
        else:
            w.tokens.appendleft([slot, amount])
        w.tokens_sum += amount
