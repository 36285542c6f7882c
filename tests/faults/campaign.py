"""Fault campaign: the gateway process under load while the upstream misbehaves.

    .venv/bin/python -m tests.faults.campaign --calls 3000 --concurrency 200 --fault-rate 0.2 --seed 1
    .venv/bin/python -m tests.faults.campaign --scenario budget --duration 10 --concurrency 100

Scenario `faults` (default): the stand-in upstream (in this process) injects a
seeded random mix of faults into `--fault-rate` of its responses; the gateway runs
as a subprocess (`python -m gpt_grpc.server`, short request timeout, fast retries)
and takes a bounded mix of unary and streaming calls, each with a unique message.
Then, call by call, the outcome is checked against what the stand-in did to that
call's attempts (matched by the message): OK with the full echo, or exactly the
status the error table maps the LAST attempt's fault to; never UNKNOWN; never more
upstream attempts than max_attempts; attempts reported = attempts seen; a retryable
failure ends early only when the retry budget says so. After the run: no call in
flight, no upstream request still open, every upstream connection still open is
an idle keep-alive connection of the gateway's pool (and none is left once the
gateway stops), no leftover asyncio task, RSS within a bound of the warmed-up RSS.

Scenario `budget`: the upstream answers 503 to everything for `--duration` seconds
at `--concurrency`; the upstream must see at most 1.3x as many requests as the
gateway took calls, and calls refused by the retry budget are answered within 1 s.

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from google.protobuf import duration_pb2
from gptgrpc.v1 import gateway_pb2 as pb
from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc

from tests.faults.harness import ADMIN, KEY, GatewayProcess, RssSampler, percentile
from tests.helpers import details
from tests.standin import RecordedRequest, Standin

# The faults of the issue: 429 with Retry-After, 500, 502, 503, a hang past the
# request timeout, a connection dropped mid-stream, invalid JSON, an HTML error
# page, a truncated SSE stream.
CAMPAIGN_KINDS: tuple[str, ...] = (
    "rate_limit",
    "server_error",
    "bad_gateway",
    "unavailable",
    "hang",
    "drop_mid_stream",
    "invalid_json",
    "html_error",
    "truncated_sse",
)

# The error table, for what the stand-in can do to one attempt:
# fault kind -> (gRPC code, ErrorReason) the call ends with when no retry follows.
ERROR_TABLE: dict[str, tuple[str, str]] = {
    "rate_limit": ("RESOURCE_EXHAUSTED", "UPSTREAM_RATE_LIMITED"),
    "insufficient_quota": ("RESOURCE_EXHAUSTED", "UPSTREAM_QUOTA_EXCEEDED"),
    "server_error": ("UNAVAILABLE", "UPSTREAM_UNAVAILABLE"),
    "bad_gateway": ("UNAVAILABLE", "UPSTREAM_UNAVAILABLE"),
    "unavailable": ("UNAVAILABLE", "UPSTREAM_UNAVAILABLE"),
    "html_error": ("UNAVAILABLE", "UPSTREAM_UNAVAILABLE"),
    "reset": ("UNAVAILABLE", "UPSTREAM_UNAVAILABLE"),
    # The upstream answered 200, then its answer was cut short: unreadable (issue 11 item 1).
    "drop_mid_stream": ("UNAVAILABLE", "UPSTREAM_RESPONSE_INVALID"),
    "truncated_sse": ("UNAVAILABLE", "UPSTREAM_RESPONSE_INVALID"),
    "invalid_json": ("UNAVAILABLE", "UPSTREAM_RESPONSE_INVALID"),
    "hang": ("DEADLINE_EXCEEDED", "UPSTREAM_TIMEOUT"),
    "context_length_exceeded": ("INVALID_ARGUMENT", "UPSTREAM_CONTEXT_LENGTH_EXCEEDED"),
    "model_not_found": ("NOT_FOUND", "UPSTREAM_NOT_FOUND"),
    "unauthorized": ("UNAUTHENTICATED", "UPSTREAM_AUTHENTICATION_FAILED"),
    "forbidden": ("PERMISSION_DENIED", "UPSTREAM_PERMISSION_DENIED"),
}
# Faults the gateway retries when they strike before anything reached the caller.
RETRIED_KINDS = frozenset(
    {
        "rate_limit",
        "server_error",
        "bad_gateway",
        "unavailable",
        "html_error",
        "reset",
        "drop_mid_stream",
        "invalid_json",
        "hang",
    }
)
# In a stream these strike after the first deltas went out: final, never retried.
AFTER_FIRST_DELTA = frozenset({"drop_mid_stream", "truncated_sse"})
# Faults that change nothing the caller sees (with a delay below the request timeout).
HARMLESS = frozenset({"slow", "slow_stream", "no_usage"})
# Reasons that carry RetryInfo (server/status.py RETRY_LATER).
RETRY_LATER_REASONS = frozenset(
    {
        "UPSTREAM_RATE_LIMITED",
        "UPSTREAM_UNAVAILABLE",
        "UPSTREAM_RESPONSE_INVALID",
        "UPSTREAM_TIMEOUT",
        "UPSTREAM_CONFLICT",
    }
)


@dataclass(frozen=True)
class Expected:
    code: str  # "OK" or a grpc.StatusCode name
    reason: str = ""
    retried: bool = False  # the gateway tries again after this fault (attempts left)
    partial: bool = False  # deltas reached the caller before the failure


def expected(fault: str | None, stream: bool) -> Expected:
    """What one attempt meeting `fault` leads to."""
    if fault is None or fault in HARMLESS or (fault == "truncated_sse" and not stream):
        return Expected("OK")
    code, reason = ERROR_TABLE[fault]
    if stream and fault in AFTER_FIRST_DELTA:
        return Expected(code, reason, partial=True)
    return Expected(code, reason, retried=fault in RETRIED_KINDS)


@dataclass
class CallResult:
    index: int
    stream: bool
    message: str
    code: str = "OK"
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    error_infos: int = 0
    domain: str = ""
    retry_info: bool = False
    details: str = ""
    content: str = ""
    deltas: int = 0
    summary: bool = False
    finish_reason: int = 0
    attempts: int = 0
    elapsed: float = 0.0


def _fill_error(result: CallResult, err: grpc.aio.AioRpcError) -> None:
    result.code = err.code().name
    result.details = err.details() or ""
    try:
        info = details(err)
    except Exception as exc:  # undecodable details are a finding, not a crash
        result.details += f" [status details undecodable: {exc!r}]"
        return
    result.error_infos = len(info.error_infos)
    if info.error_infos:
        result.reason = info.error_infos[0].reason
        result.domain = info.error_infos[0].domain
        result.metadata = dict(info.error_infos[0].metadata)
    result.retry_info = info.retry_info is not None


async def one_call(stub: pb_grpc.GPTServiceStub, index: int, stream: bool, message: str, timeout: float) -> CallResult:
    result = CallResult(index, stream, message)
    started = time.monotonic()
    try:
        if stream:
            call = stub.StreamChatCompletion(pb.StreamChatCompletionRequest(user_message=message), timeout=timeout)
            pieces: list[str] = []
            try:
                async for event in call:
                    if event.HasField("delta"):
                        pieces.append(event.delta.content)
                        result.deltas += 1
                    else:
                        result.summary = True
                        result.attempts = event.summary.attempts
                        result.finish_reason = event.summary.finish_reason
            finally:
                result.content = "".join(pieces)
        else:
            reply = await stub.ChatCompletion(pb.ChatCompletionRequest(user_message=message), timeout=timeout)
            result.content = reply.content
            result.attempts = reply.attempts
            result.finish_reason = reply.finish_reason
    except grpc.aio.AioRpcError as err:
        _fill_error(result, err)
    result.elapsed = time.monotonic() - started
    return result


def check_call(call: CallResult, records: Sequence[RecordedRequest], max_attempts: int) -> list[str]:
    """Everything wrong with one call, given the upstream attempts it made."""
    problems: list[str] = []
    what = f"call {call.index} ({'stream' if call.stream else 'unary'})"
    faults = [r.fault for r in records]
    if call.code in ("UNKNOWN", "INTERNAL"):
        problems.append(f"{what}: {call.code}: {call.details}")
    if call.code != "OK" and (call.error_infos != 1 or call.domain != "gpt-grpc"):
        problems.append(f"{what}: {call.error_infos} ErrorInfo (domain {call.domain!r}), want exactly one")
    if not records:
        problems.append(f"{what}: ended {call.code}/{call.reason} but never reached the upstream")
        return problems
    if len(records) > max_attempts:
        problems.append(f"{what}: {len(records)} upstream attempts > max_attempts {max_attempts}: {faults}")
    for r in records:
        if (r.body.get("stream") is True) != call.stream:
            problems.append(f"{what}: an upstream attempt had stream={r.body.get('stream')}")
    for number, fault in enumerate(faults[:-1], 1):
        if not expected(fault, call.stream).retried:
            problems.append(f"{what}: attempt {number} met {fault!r} (final) yet was retried: {faults}")
    want = expected(faults[-1], call.stream)
    echo = "Echo: " + call.message
    got = (call.code, call.reason)
    if want.code == "OK":
        if call.code != "OK":
            problems.append(f"{what}: last attempt {faults[-1]!r} should succeed, got {got} {call.details!r}")
        elif call.content != echo:
            problems.append(f"{what}: content {call.content!r} != {echo!r}")
        elif call.stream and not (call.summary and call.finish_reason == pb.FINISH_REASON_STOP):
            problems.append(f"{what}: stream without a STOP summary")
        elif call.attempts != len(records):
            problems.append(f"{what}: reports {call.attempts} attempts, upstream saw {len(records)}: {faults}")
        return problems
    if got != (want.code, want.reason):
        problems.append(
            f"{what}: last attempt {faults[-1]!r} maps to {want.code}/{want.reason}, got {got} "
            f"{call.details!r}; attempts {faults}"
        )
        return problems
    if call.metadata.get("attempts") != str(len(records)):
        problems.append(f"{what}: attempts metadata {call.metadata.get('attempts')} != {len(records)}: {faults}")
    if want.reason in RETRY_LATER_REASONS and not call.retry_info:
        problems.append(f"{what}: {want.reason} without RetryInfo")
    if want.partial:
        if not call.deltas or not echo.startswith(call.content) or call.content == echo:
            problems.append(f"{what}: {faults[-1]} after first delta, but content was {call.content!r}")
    elif call.deltas:
        problems.append(f"{what}: failed before the first delta but the caller got {call.content!r}")
    if want.retried and len(records) < max_attempts and call.metadata.get("retry_budget_exhausted") != "true":
        problems.append(f"{what}: gave up after {len(records)} attempts with no budget refusal: {faults}")
    return problems


# --------------------------------------------------------------------------- faults


@dataclass
class CampaignOptions:
    calls: int = 3000
    concurrency: int = 200
    fault_rate: float = 0.2
    seed: int = 1
    kinds: tuple[str, ...] = CAMPAIGN_KINDS
    stream_share: float = 0.5
    request_timeout: float = 2.0
    max_attempts: int = 3
    initial_backoff: float = 0.01
    max_backoff: float = 0.1
    call_timeout: float = 30.0
    warmup_calls: int = 400
    rss_bound_mb: float = 50.0
    settle_seconds: float = 5.0


@dataclass
class CampaignReport:
    options: CampaignOptions
    calls: list[CallResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    upstream_requests: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    attempts: dict[int, int] = field(default_factory=dict)
    budget_refusals: int = 0
    duration: float = 0.0
    rss_start_mb: float = 0.0
    rss_warm_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_hwm_mb: float = 0.0
    rss_final_mb: float = 0.0
    tasks_warm: int = 0
    tasks_final: int = 0
    open_before_stop: int = 0
    pool_idle: int | None = None
    open_after_stop: int = 0
    exit_code: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def outcomes(self) -> collections.Counter[str]:
        return collections.Counter(c.code if c.code == "OK" else f"{c.code}/{c.reason}" for c in self.calls)

    def table(self) -> str:
        o = self.options
        streams = sum(c.stream for c in self.calls)
        lines = [
            f"fault campaign: {len(self.calls)} calls ({len(self.calls) - streams} unary, {streams} stream) "
            f"at concurrency {o.concurrency}, fault rate {o.fault_rate}, seed {o.seed}",
            f"  duration                {self.duration:8.1f} s  "
            f"({len(self.calls) / max(self.duration, 1e-9):.0f} calls/s)",
            f"  upstream requests       {self.upstream_requests:8d}",
            "  faults injected by kind:",
        ]
        lines += [f"    {kind:<26}{n:8d}" for kind, n in sorted(self.faults.items(), key=lambda kv: -kv[1])]
        lines.append("  outcomes by status:")
        lines += [f"    {name:<52}{n:8d}" for name, n in self.outcomes().most_common()]
        lines.append("  upstream attempts per call:")
        lines += [f"    {k:<22}{v:8d}" for k, v in sorted(self.attempts.items())]
        elapsed = [c.elapsed for c in self.calls]
        lines += [
            f"  retries refused by budget {self.budget_refusals:6d} calls",
            f"  latency p50/p99/max     {percentile(elapsed, 50):.3f} / {percentile(elapsed, 99):.3f} / "
            f"{max(elapsed, default=0):.3f} s",
            f"  gateway RSS             start {self.rss_start_mb:.0f} MB, warmed up {self.rss_warm_mb:.0f} MB, "
            f"peak {self.rss_peak_mb:.0f} MB (VmHWM {self.rss_hwm_mb:.0f}), final {self.rss_final_mb:.0f} MB "
            f"(bound: warmed up + {o.rss_bound_mb:.0f} MB)",
            f"  asyncio tasks           warmed up {self.tasks_warm}, final {self.tasks_final}",
            f"  upstream connections    open before stop {self.open_before_stop} "
            f"(gateway pool idle {self.pool_idle}), after stop {self.open_after_stop}; exit code {self.exit_code}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  checks                  {'PASS' if self.ok else f'FAIL ({len(self.failures)})'}")
        lines += [f"    - {f}" for f in self.failures[:40]]
        if len(self.failures) > 40:
            lines.append(f"    ... and {len(self.failures) - 40} more")
        return "\n".join(lines)


async def _run_load(
    stub: pb_grpc.GPTServiceStub,
    plan: Sequence[tuple[int, bool, str]],
    concurrency: int,
    timeout: float,
) -> list[CallResult]:
    results: list[CallResult | None] = [None] * len(plan)
    todo = iter(plan)

    async def worker() -> None:
        for index, stream, message in todo:  # one shared iterator: each call runs once
            results[index] = await one_call(stub, index, stream, message, timeout)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(plan)))))
    return [r for r in results if r is not None]


def _plan(calls: int, stream_share: float, seed: int, tag: str) -> list[tuple[int, bool, str]]:
    rng = random.Random(seed)
    return [(i, rng.random() < stream_share, f"{tag} call {i:05d} of the campaign") for i in range(calls)]


async def _configure_fast_retries(stub: pb_grpc.GPTServiceStub, o: CampaignOptions) -> None:
    def seconds(value: float) -> duration_pb2.Duration:
        d = duration_pb2.Duration()
        d.FromNanoseconds(round(value * 1e9))
        return d

    await stub.Configure(
        pb.ConfigureRequest(
            retry_policy=pb.RetryPolicy(
                max_attempts=o.max_attempts,
                initial_backoff=seconds(o.initial_backoff),
                max_backoff=seconds(o.max_backoff),
            )
        ),
        metadata=ADMIN,
        timeout=10,
    )


def _in_progress(records: Sequence[RecordedRequest]) -> list[RecordedRequest]:
    """Upstream requests whose handler has not ended (answered, abandoned by the client, or cut)."""
    return [r for r in records if not (r.completed or r.client_disconnected or r.fault in ("drop_mid_stream", "reset"))]


async def _settle(predicate: Callable[[], bool], seconds: float) -> bool:
    """Poll `predicate()` for up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)


async def run_campaign(o: CampaignOptions) -> CampaignReport:
    report = CampaignReport(o)
    fail = report.failures.append
    records: list[RecordedRequest] = []
    async with Standin(api_keys={KEY}) as standin:
        gateway = GatewayProcess(
            standin.base_url,
            "--request-timeout",
            str(o.request_timeout),
            "--max-attempts",
            str(o.max_attempts),
            "--grace-period",
            "10",
        )
        sampler = RssSampler(gateway)
        try:
            await gateway.wait_serving()
            report.rss_start_mb = gateway.rss_mb()
            async with grpc.aio.insecure_channel(gateway.target) as channel:
                stub = pb_grpc.GPTServiceStub(channel)
                await _configure_fast_retries(stub, o)
                # Warm-up without faults: pools, caches and allocator reach their working size.
                warm = await _run_load(
                    stub, _plan(o.warmup_calls, o.stream_share, o.seed, "warm-up"), o.concurrency, o.call_timeout
                )
                bad_warm = [c for c in warm if c.code != "OK"]
                if bad_warm:
                    fail(f"warm-up: {len(bad_warm)} calls failed, e.g. {bad_warm[0]}")
                await asyncio.sleep(0.5)
                report.tasks_warm = (await gateway.debug_state()).tasks
                report.rss_warm_mb = gateway.rss_mb()
                standin.reset()
                standin.set_random_faults(o.fault_rate, o.kinds, o.seed)

                sampler.start()
                started = time.monotonic()
                plan = _plan(o.calls, o.stream_share, o.seed, f"s{o.seed}")
                async with asyncio.timeout(max(120.0, o.calls / 5)):
                    report.calls = await _run_load(stub, plan, o.concurrency, o.call_timeout)
                report.duration = time.monotonic() - started
                standin.set_random_faults(0.0)
                report.upstream_requests = standin.request_count
                report.faults = standin.fault_counts

                # After the run: nothing in flight anywhere.
                records = list(standin.requests)
                if not await _settle(lambda: not _in_progress(records), o.settle_seconds):
                    left = _in_progress(records)
                    fail(f"{len(left)} upstream requests still in progress, e.g. {left[0].fault} {left[0].body}")
                state = await gateway.debug_state()

                async def pool_settled() -> bool:
                    nonlocal state
                    state = await gateway.debug_state()
                    return state.idle_connections in (None, standin.open_connections)

                deadline = time.monotonic() + o.settle_seconds
                while not await pool_settled() and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                report.open_before_stop = standin.open_connections
                report.pool_idle = state.idle_connections
                if state.in_flight:
                    fail(f"{state.in_flight} calls still in flight in the gateway")
                if state.active_requests or state.active_connections or state.queued_requests:
                    fail(f"upstream pool not idle: {state}")
                if state.idle_connections is None:
                    report.notes.append(
                        "the gateway's debug line did not report its upstream pool (another transport?): "
                        "connections were checked only at the upstream (none in progress, <= concurrency, "
                        "none after stop)"
                    )
                elif report.open_before_stop != state.idle_connections:
                    fail(
                        f"{report.open_before_stop} connections open at the upstream but the gateway pool "
                        f"holds {state.idle_connections} idle ones: connections leaked outside the pool"
                    )
                if report.open_before_stop > o.concurrency:
                    fail(f"{report.open_before_stop} upstream connections open > concurrency {o.concurrency}")
                tasks_ok = await _settle_tasks(gateway, report.tasks_warm, o.settle_seconds)
                report.tasks_final = tasks_ok
                if report.tasks_final > report.tasks_warm:
                    fail(f"asyncio tasks: {report.tasks_final} after the run > {report.tasks_warm} warmed up")
                await sampler.stop()
                report.rss_peak_mb = sampler.peak_mb
                report.rss_hwm_mb = gateway.peak_rss_mb()
                report.rss_final_mb = gateway.rss_mb()
                if report.rss_final_mb > report.rss_warm_mb + o.rss_bound_mb:
                    fail(
                        f"RSS {report.rss_final_mb:.0f} MB after the run > warmed up {report.rss_warm_mb:.0f} MB "
                        f"+ {o.rss_bound_mb:.0f} MB"
                    )
                health = await stub.GetConfiguration(pb.GetConfigurationRequest(), timeout=5)
                if health.configuration.retry_policy.max_attempts != o.max_attempts:
                    fail("configuration changed during the run")
            report.exit_code = await gateway.terminate(timeout=20)
            if report.exit_code != 0:
                fail(f"gateway exit code {report.exit_code} after SIGTERM")
            await _settle(lambda: standin.open_connections == 0, o.settle_seconds)
            report.open_after_stop = standin.open_connections
            if report.open_after_stop:
                fail(f"{report.open_after_stop} upstream connections still open after the gateway stopped")
        finally:
            await sampler.stop()
            gateway.close(keep_log=bool(report.failures))
            if report.failures:
                report.failures.append(f"gateway log kept at {gateway.log_path}")

    by_message: dict[str, list[RecordedRequest]] = collections.defaultdict(list)
    for r in records:
        messages = r.body.get("messages") or [{}]
        by_message[str(messages[-1].get("content"))].append(r)
    for call in report.calls:
        mine = sorted(by_message.get(call.message, []), key=lambda r: r.received_at)
        report.attempts[len(mine)] = report.attempts.get(len(mine), 0) + 1
        report.failures.extend(check_call(call, mine, o.max_attempts))
        if call.metadata.get("retry_budget_exhausted") == "true":
            report.budget_refusals += 1
    if len(report.calls) != o.calls:
        fail(f"{o.calls - len(report.calls)} calls never finished")
    stray = set(by_message) - {c.message for c in report.calls}
    if stray:
        fail(f"upstream requests that belong to no call: {sorted(stray)[:3]}")
    return report


async def _settle_tasks(gateway: GatewayProcess, target: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while True:
        tasks = (await gateway.debug_state()).tasks
        if tasks <= target or time.monotonic() > deadline:
            return tasks
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- budget


@dataclass
class BudgetOptions:
    duration: float = 10.0
    concurrency: int = 100
    max_ratio: float = 1.3
    answer_within: float = 1.0
    call_timeout: float = 10.0
    stream_share: float = 0.5
    max_attempts: int = 3  # the production default policy


@dataclass
class BudgetCall:
    start: float
    end: float
    result: CallResult
    upstream_attempts: int = 0
    last_attempt_at: float = 0.0  # when the stand-in received the call's last attempt

    @property
    def refused(self) -> bool:
        return self.result.metadata.get("retry_budget_exhausted") == "true"

    @property
    def answer_delay(self) -> float:
        """From the last upstream attempt to the caller having the answer."""
        return self.end - self.last_attempt_at


@dataclass
class BudgetReport:
    options: BudgetOptions
    calls: list[BudgetCall] = field(default_factory=list)
    upstream_requests: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def ratio(self) -> float:
        return self.upstream_requests / max(1, len(self.calls))

    def refused(self) -> list[BudgetCall]:
        return [c for c in self.calls if c.refused]

    def after_exhaustion(self) -> list[float]:
        """Whole-call latencies of calls started once the budget had first refused a retry."""
        refused = self.refused()
        if not refused:
            return []
        first = min(c.end for c in refused)
        return [c.end - c.start for c in self.calls if c.start >= first]

    def table(self) -> str:
        o = self.options
        refused = self.refused()
        delays = [c.answer_delay for c in refused]
        whole = [c.end - c.start for c in refused]
        after = self.after_exhaustion()
        outcomes = collections.Counter(f"{c.result.code}/{c.result.reason}" for c in self.calls)
        attempts = collections.Counter(c.upstream_attempts for c in self.calls)

        def stats(values: list[float]) -> str:
            return (
                f"p50/p99/max {percentile(values, 50):.3f} / {percentile(values, 99):.3f} / "
                f"{max(values, default=0):.3f} s"
            )

        lines = [
            f"retry budget: upstream answers 503 to everything for {o.duration:g} s at concurrency {o.concurrency}",
            f"  gateway calls           {len(self.calls):8d}",
            f"  upstream requests       {self.upstream_requests:8d}  (ratio {self.ratio:.3f}, bound {o.max_ratio})",
            "  upstream attempts/call  " + ", ".join(f"{k}: {v}" for k, v in sorted(attempts.items())),
            f"  refused by the budget   {len(refused):8d} calls",
            f"    answer after the refused call's last attempt {stats(delays)} (bound {o.answer_within} s)",
            f"    whole call                                  {stats(whole)}",
            f"  all calls started once the budget ran out ({len(after)}): {stats(after)}",
            "  outcomes: " + ", ".join(f"{k} {v}" for k, v in outcomes.most_common()),
            f"  checks                  {'PASS' if self.ok else f'FAIL ({len(self.failures)})'}",
        ]
        lines += [f"    - {f}" for f in self.failures[:20]]
        return "\n".join(lines)


async def run_budget(o: BudgetOptions) -> BudgetReport:
    """The production retry policy and budget against an upstream that only answers 503."""
    report = BudgetReport(o)
    records: list[RecordedRequest] = []
    async with Standin(api_keys={KEY}) as standin:
        gateway = GatewayProcess(standin.base_url, "--grace-period", "5")
        try:
            await gateway.wait_serving()
            standin.set_random_faults(1.0, ["unavailable"], seed=1)
            async with grpc.aio.insecure_channel(gateway.target) as channel:
                stub = pb_grpc.GPTServiceStub(channel)
                rng = random.Random(1)
                stop_at = time.monotonic() + o.duration
                counter = 0

                async def worker() -> None:
                    nonlocal counter
                    while time.monotonic() < stop_at:
                        counter += 1
                        index = counter
                        begin = time.monotonic()
                        stream = rng.random() < o.stream_share
                        result = await one_call(stub, index, stream, f"budget call {index}", o.call_timeout)
                        report.calls.append(BudgetCall(begin, time.monotonic(), result))

                async with asyncio.timeout(o.duration + o.call_timeout + 30):
                    await asyncio.gather(*(worker() for _ in range(o.concurrency)))
            report.upstream_requests = standin.request_count
            records = list(standin.requests)
            exit_code = await gateway.terminate(timeout=20)
            if exit_code != 0:
                report.failures.append(f"gateway exit code {exit_code} after SIGTERM")
        finally:
            gateway.close(keep_log=bool(report.failures))

    fail = report.failures.append
    last: dict[str, float] = {}
    seen: collections.Counter[str] = collections.Counter()
    for r in records:  # the stand-in runs in this process: same monotonic clock
        message = str((r.body.get("messages") or [{}])[-1].get("content"))
        seen[message] += 1
        last[message] = max(last.get(message, 0.0), r.received_at)
    for call in report.calls:
        call.upstream_attempts = seen[call.result.message]
        call.last_attempt_at = last.get(call.result.message, call.end)
    if report.ratio > o.max_ratio:
        fail(f"upstream saw {report.upstream_requests} requests for {len(report.calls)} calls: {report.ratio:.3f}x")
    wrong = [
        c.result for c in report.calls if (c.result.code, c.result.reason) != ("UNAVAILABLE", "UPSTREAM_UNAVAILABLE")
    ]
    if wrong:
        fail(f"{len(wrong)} calls did not end UNAVAILABLE/UPSTREAM_UNAVAILABLE, e.g. {wrong[0]}")
    miscounted = [c for c in report.calls if c.result.metadata.get("attempts") != str(c.upstream_attempts)]
    if miscounted:
        fail(f"{len(miscounted)} calls report other attempt counts than the upstream saw")
    too_many = [c for c in report.calls if c.upstream_attempts > o.max_attempts]
    if too_many:
        fail(f"{len(too_many)} calls made more than {o.max_attempts} upstream attempts")
    refused = report.refused()
    if not refused:
        fail("the retry budget never refused a retry")
    late = [c for c in refused if c.answer_delay >= o.answer_within]
    if late:
        fail(
            f"{len(late)} calls refused by the budget were answered >= {o.answer_within} s after their last "
            f"upstream attempt, e.g. {late[0].answer_delay:.3f} s"
        )
    return report


# --------------------------------------------------------------------------- CLI


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.faults.campaign", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", choices=("faults", "budget"), default="faults")
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=None, help="200 for faults, 100 for budget")
    p.add_argument("--fault-rate", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kinds", nargs="+", default=list(CAMPAIGN_KINDS), help="fault kinds to draw from")
    p.add_argument("--stream-share", type=float, default=0.5, help="fraction of streaming calls")
    p.add_argument("--request-timeout", type=float, default=2.0, help="the gateway's upstream timeout")
    p.add_argument("--rss-bound-mb", type=float, default=50.0, help="allowed RSS growth after warm-up")
    p.add_argument("--duration", type=float, default=10.0, help="budget: seconds of 503s")
    args = p.parse_args(argv)
    if not 1 <= args.calls <= 100_000 or not 0 <= args.fault_rate <= 1:
        p.error("--calls must be 1..100000 and --fault-rate 0..1")
    if not 0 < args.duration <= 120:
        p.error("--duration must be in (0, 120] seconds")
    unknown = set(args.kinds) - set(ERROR_TABLE) - HARMLESS
    if unknown:
        p.error(f"kinds without an expected outcome: {sorted(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if args.scenario == "budget":
        budget = asyncio.run(run_budget(BudgetOptions(duration=args.duration, concurrency=args.concurrency or 100)))
        print(budget.table())
        return 0 if budget.ok else 1
    options = CampaignOptions(
        calls=args.calls,
        concurrency=args.concurrency or 200,
        fault_rate=args.fault_rate,
        seed=args.seed,
        kinds=tuple(args.kinds),
        stream_share=args.stream_share,
        request_timeout=args.request_timeout,
        rss_bound_mb=args.rss_bound_mb,
    )
    report = asyncio.run(run_campaign(options))
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
