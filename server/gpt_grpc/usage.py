"""What finished calls used: the outcome the engine records, and the per-model totals since start.

The engine hands every finished call (a result, or the failure it ended
with) to one `ResultSink`, once. `UsageTracker` (the original module's cost
tracking) is the sink today; per-client spend, conversation turns or a
store are sinks of their own beside it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

from .chat import ChatResult, Usage
from .models import ModelRecord


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """One finished call: its model, and its result or how it failed."""

    model: ModelRecord
    result: ChatResult | None  # None: the call failed (or the caller went away)
    error: BaseException | None = None
    request_id: str | None = None  # the caller's

    @property
    def ok(self) -> bool:
        return self.result is not None


class ResultSink(Protocol):
    """Told about every finished call, exactly once."""

    def record(self, outcome: CallOutcome) -> None: ...


class DiscardResults:
    """A sink that keeps nothing: for the server, whose envelope records each call once
    (usage, spend and metrics: servicer._finish), so the engine's own tally would be dead weight."""

    def record(self, outcome: CallOutcome) -> None:
        return None


# Distinct model names tracked one by one; calls naming further ones add to OTHER_MODELS.
MAX_MODELS = 1000
OTHER_MODELS = "(other)"


@dataclass(frozen=True)
class ModelTotals:
    model: str = ""
    requests: int = 0
    failed_requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    unpriced_requests: int = 0

    @classmethod
    def of_call(
        cls, model: str, usage: Usage | None, cost_usd: float | None, ok: bool, spend: float | None = None
    ) -> ModelTotals:
        """The totals one finished call adds; tokens of a failed call (a stream cut short) count too.

        `spend`: the cost to add when it is not `cost_usd` itself (a fallback price, say)."""
        return cls(
            model=model,
            requests=1 if ok else 0,
            failed_requests=0 if ok else 1,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            cached_prompt_tokens=usage.cached_prompt_tokens if usage else 0,
            reasoning_tokens=usage.reasoning_tokens if usage else 0,
            cost_usd=(cost_usd or 0.0) if spend is None else spend,
            unpriced_requests=1 if ok and cost_usd is None else 0,
        )

    def plus(self, other: ModelTotals) -> ModelTotals:
        return ModelTotals(
            model=self.model,
            requests=self.requests + other.requests,
            failed_requests=self.failed_requests + other.failed_requests,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens + other.cached_prompt_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            unpriced_requests=self.unpriced_requests + other.unpriced_requests,
        )


# The counted columns of ModelTotals (every field but the model), as the stores keep them.
COUNTED_FIELDS: tuple[str, ...] = (
    "requests",
    "failed_requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_prompt_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced_requests",
)


class UsageTracker:
    """Thread-safe counters; the sync `GPT` facade and the server share the type."""

    def __init__(self) -> None:
        self.since = time.time()
        self._lock = threading.Lock()
        self._models: dict[str, ModelTotals] = {}

    def record(self, outcome: CallOutcome) -> None:
        result = outcome.result
        if result is None:
            self.record_failure(outcome.model.name)
        else:
            self.record_success(outcome.model.name, result.usage, result.cost_usd)

    def record_success(self, model: str, usage: Usage, cost_usd: float | None) -> None:
        self._add(model, ModelTotals.of_call(model, usage, cost_usd, ok=True))

    def record_failure(self, model: str, usage: Usage | None = None, cost_usd: float | None = None) -> None:
        """A failed call; tokens already generated (a stream cut short) still count."""
        self._add(model, ModelTotals.of_call(model, usage, cost_usd, ok=False))

    def _add(self, model: str, delta: ModelTotals) -> None:
        with self._lock:
            if model not in self._models and len(self._models) >= MAX_MODELS:
                model = OTHER_MODELS  # callers name models: their number is bounded, the totals stay whole
            self._models[model] = self._models.get(model, ModelTotals(model=model)).plus(delta)

    def snapshot(self) -> tuple[list[ModelTotals], ModelTotals]:
        """(per model sorted by name, total)."""
        with self._lock:
            models = sorted(self._models.values(), key=lambda m: m.model)
        total = ModelTotals()
        for m in models:
            total = total.plus(m)
        return models, total
