"""Prometheus metrics: calls, latency, upstream attempts, tokens and cost.

Counting is always on (a few microseconds a call); the HTTP endpoint that
exposes it is off unless a port is given. Model names come from callers, so
only the first MAX_MODEL_LABELS distinct names, of at most MAX_MODEL_CHARS
characters each, get their own label: a caller cannot blow up the metric
cardinality or the size of a scrape.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

from ..chat import MAX_MODEL_CHARS, Usage
from ..retry import RetryBudget
from ..store.base import Store

MAX_MODEL_LABELS = 200
# (model, client) pairs whose usage counters are kept at hand (a shortcut past labels(), bounded).
MAX_CACHED_USAGE_LABELS = 4096
# Gauges a worker samples for the parent's scrape (multiprocess mode).
SAMPLE_SECONDS = 1.0
OTHER = "other"
ANONYMOUS = "anonymous"

BREAKER_STATE_VALUES = {"closed": 0, "open": 1, "half_open": 2}

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # A worker of --workers N: its values go to files the parent sums in one scrape.
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        if not self.multiprocess:
            ProcessCollector(registry=r)
        self.calls = Counter("gpt_grpc_calls", "Calls by method and status code.", ["method", "code"], registry=r)
        self.call_seconds = Histogram(
            "gpt_grpc_call_duration_seconds", "Whole-call latency.", ["method"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.first_chunk_seconds = Histogram(
            "gpt_grpc_stream_first_chunk_seconds",
            "Time from call start to the first streamed delta.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.attempt_seconds = Histogram(
            "gpt_grpc_upstream_attempt_duration_seconds",
            "Latency of one upstream attempt, by outcome (ok or the failure reason).",
            ["outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.attempts = Counter("gpt_grpc_upstream_attempts", "Upstream attempts by outcome.", ["outcome"], registry=r)
        self.retries = Counter(
            "gpt_grpc_upstream_retries", "Retries, by the reason of the attempt that failed.", ["reason"], registry=r
        )
        self.in_flight = Gauge(
            "gpt_grpc_calls_in_flight", "Calls being served.", registry=r, multiprocess_mode="livesum"
        )
        self.tokens = Counter(
            "gpt_grpc_tokens",
            "Tokens by model, client and kind (prompt, completion, cached_prompt, reasoning).",
            ["model", "client", "kind"],
            registry=r,
        )
        self.cost = Counter("gpt_grpc_cost_usd", "Cost in USD by model and client.", ["model", "client"], registry=r)
        self.tasks = Gauge(
            "gpt_grpc_event_loop_tasks",
            "asyncio tasks alive in the server's loop.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.budget_first = Gauge(
            "gpt_grpc_retry_budget_first_attempts",
            "First attempts in the retry budget's window.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.budget_retries = Gauge(
            "gpt_grpc_retry_budget_retries",
            "Retries in the retry budget's window.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.budget_refused = Gauge(
            "gpt_grpc_retry_budget_refused",
            "Retries refused by the budget since start.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.store_degraded = Gauge(
            "gpt_grpc_store_degraded",
            "1 while the shared store cannot be reached: serving from what this process knows, limits per replica.",
            registry=r,
            multiprocess_mode="max",
        )
        self.store_round_trips = Gauge(
            "gpt_grpc_store_round_trips",
            "Requests sent to the store since start (a pipeline or a script is one).",
            registry=r,
            multiprocess_mode="livesum",
        )
        # Per configured upstream (names from the operator's set: bounded by upstreams.MAX_UPSTREAMS).
        self.upstream_attempts = Counter(
            "gpt_grpc_upstream_attempts_by_upstream",
            "Upstream attempts by configured upstream and outcome (ok or the failure reason).",
            ["upstream", "outcome"],
            registry=r,
        )
        self.upstream_breaker = Gauge(
            "gpt_grpc_upstream_breaker_state",
            "Circuit breaker state per upstream: 0 closed, 1 open, 2 half-open.",
            ["upstream"],
            registry=r,
            multiprocess_mode="max",
        )
        self.upstream_breaker_opened = Counter(
            "gpt_grpc_upstream_breaker_opened", "Times an upstream's circuit breaker opened.", ["upstream"], registry=r
        )
        self._breaker_states: dict[str, str] = {}
        self._upstream_children: dict[tuple[str, str], Any] = {}
        self._sampler: asyncio.Task[None] | None = None
        self._models: set[str] = set()
        self._call_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._attempt_children: dict[str, tuple[Any, Any]] = {}
        # (model label, client) -> its token counters (prompt, completion); the cost counter apart,
        # made on the first cost (an unpriced model has no cost series).
        self._usage_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._cost_children: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        # The calls-in-flight gauge follows call_began/call_ended until watch() gives it a function.
        self._in_flight_counted = True

    def watch(
        self,
        loop: asyncio.AbstractEventLoop,
        budget: RetryBudget | None,
        store: Store | None = None,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        """Gauges read at scrape time (the scrape runs on another thread).

        In multiprocess mode the scrape happens in the parent, which cannot call
        into a worker: each worker samples them every SAMPLE_SECONDS instead,
        and counts its calls in flight as they begin and end (`call_began`).
        """
        if self.multiprocess:
            self._sampler = loop.create_task(self._sample(loop, budget, store))
            return
        if in_flight is not None:
            # Read from admission's own count at scrape time: two locked updates a call saved.
            self._in_flight_counted = False
            self.in_flight.set_function(in_flight)
        self.tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        if store is not None:
            self.store_round_trips.set_function(lambda: store.round_trips)
        if budget is not None:
            self.budget_first.set_function(lambda: budget.state()[0])
            self.budget_retries.set_function(lambda: budget.state()[1])
            self.budget_refused.set_function(lambda: budget.refused)

    async def _sample(self, loop: asyncio.AbstractEventLoop, budget: RetryBudget | None, store: Store | None) -> None:
        while True:
            self.tasks.set(len(asyncio.all_tasks(loop)))
            if store is not None:
                self.store_round_trips.set(store.round_trips)
            if budget is not None:
                first, retries = budget.state()[:2]
                self.budget_first.set(first)
                self.budget_retries.set(retries)
                self.budget_refused.set(budget.refused)
            await asyncio.sleep(SAMPLE_SECONDS)

    def call_began(self) -> None:
        if self._in_flight_counted:
            self.in_flight.inc()

    def call_ended(self) -> None:
        if self._in_flight_counted:
            self.in_flight.dec()

    def model_label(self, model: str) -> str:
        if model in self._models:
            return model
        if len(model) > MAX_MODEL_CHARS:  # no valid request names one: never a label
            return OTHER
        with self._lock:
            if len(self._models) < MAX_MODEL_LABELS:
                self._models.add(model)
                return model
        return OTHER

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        """One finished call. Label children are cached: `labels()` costs a lock and a hash each time."""
        key = (method, code)
        children = self._call_children.get(key)
        if children is None:
            children = (self.calls.labels(method, code), self.call_seconds.labels(method))
            self._call_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    # AttemptObserver (retry.py): the engine reports each upstream attempt.
    def attempt(self, outcome: str, seconds: float) -> None:
        children = self._attempt_children.get(outcome)
        if children is None:  # outcomes are "ok" and the reasons: a few
            children = self._attempt_children[outcome] = (
                self.attempts.labels(outcome),
                self.attempt_seconds.labels(outcome),
            )
        children[0].inc()
        children[1].observe(seconds)

    def retry(self, reason: str) -> None:
        self.retries.labels(reason).inc()

    # UpstreamObserver (upstream/routing.py): attempts and breaker states per upstream.
    def upstream_attempt(self, upstream: str, outcome: str) -> None:
        key = (upstream, outcome)
        child = self._upstream_children.get(key)
        if child is None:  # cached as observe_call does: labels() costs a lock and a hash
            child = self._upstream_children[key] = self.upstream_attempts.labels(upstream, outcome)
        child.inc()

    def upstream_state(self, upstream: str, state: str) -> None:
        if state == "open" and self._breaker_states.get(upstream) != "open":
            self.upstream_breaker_opened.labels(upstream).inc()
        self._breaker_states[upstream] = state
        self.upstream_breaker.labels(upstream).set(BREAKER_STATE_VALUES.get(state, 0))

    def observe_usage(self, model: str, client: str | None, usage: Usage, cost_usd: float | None) -> None:
        m, c = self.model_label(model), client or ANONYMOUS
        key = (m, c)
        children = self._usage_children.get(key)
        if children is None:
            if len(self._usage_children) >= MAX_CACHED_USAGE_LABELS:
                # The counters stay; only the shortcuts to them are dropped.
                self._usage_children.clear()
                self._cost_children.clear()
            children = self._usage_children[key] = (
                self.tokens.labels(m, c, "prompt"),
                self.tokens.labels(m, c, "completion"),
            )
        children[0].inc(usage.prompt_tokens)
        children[1].inc(usage.completion_tokens)
        if usage.cached_prompt_tokens:
            self.tokens.labels(m, c, "cached_prompt").inc(usage.cached_prompt_tokens)
        if usage.reasoning_tokens:
            self.tokens.labels(m, c, "reasoning").inc(usage.reasoning_tokens)
        if cost_usd:
            cost = self._cost_children.get(key)
            if cost is None:
                cost = self._cost_children[key] = self.cost.labels(m, c)
            cost.inc(cost_usd)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Expose /metrics over HTTP on a thread; returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
