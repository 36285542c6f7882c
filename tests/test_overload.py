"""Overload: past --max-in-flight, calls are refused at once and memory stays flat.

The gateway runs as a process (its RSS is its own) in front of an upstream that
takes SLOW seconds to answer. N calls fill every slot; then a flood of callers,
bounded in count and time, finds the gateway full: each gets RESOURCE_EXHAUSTED
with reason OVERLOADED and RetryInfo well before the upstream could have answered,
none reaches the upstream, and the N calls under the limit complete in full.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb
from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.faults.campaign import CallResult, one_call
from tests.faults.harness import KEY, GatewayProcess, percentile
from tests.standin import Standin

LIMIT = 20  # --max-in-flight
SLOW = 3.0  # seconds the upstream takes to answer each held call
FLOOD_SECONDS = 1.5
FLOOD_MAX_CALLS = 10_000
FLOOD_CONCURRENCY = 200  # callers at once, 10x the limit
RSS_GROWTH_BOUND_MB = 25.0


@pytest.mark.timeout(60)
async def test_calls_past_the_limit_are_refused_at_once() -> None:
    async with Standin(api_keys={KEY}) as standin:
        gateway = GatewayProcess(standin.base_url, "--max-in-flight", str(LIMIT), "--grace-period", "5")
        try:
            await gateway.wait_serving()
            async with grpc.aio.insecure_channel(gateway.target) as channel:
                stub = pb_grpc.GPTServiceStub(channel)
                # Warm up both paths (refusals too) before taking the memory baseline.
                warm = await asyncio.gather(*(one_call(stub, i, i % 2 == 0, f"warm {i}", 10) for i in range(LIMIT * 3)))
                assert {w.code for w in warm} <= {"OK", "RESOURCE_EXHAUSTED"}
                await asyncio.sleep(0.2)
                rss_before = gateway.rss_mb()
                standin.reset()
                standin.set_random_faults(1.0, ["slow"], seed=1, delay=SLOW)

                held = [
                    asyncio.ensure_future(one_call(stub, i, i % 2 == 0, f"held call {i}", 30)) for i in range(LIMIT)
                ]
                await standin.wait_for(lambda s: s.request_count >= LIMIT, timeout=10)
                flood_started = time.monotonic()
                flood = await _flood(stub, flood_started + FLOOD_SECONDS)
                flood_took = time.monotonic() - flood_started
                upstream_requests = standin.request_count
                held_results = await asyncio.gather(*held)
                rss_after = gateway.rss_mb()

                # Still healthy, and the slots are free again.
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                standin.set_random_faults(0.0)
                after = await stub.ChatCompletion(pb.ChatCompletionRequest(user_message="after"), timeout=10)
                assert after.content == "Echo: after"
                state = await gateway.debug_state()
        finally:
            await gateway.terminate(timeout=10)
            gateway.close()

    latencies = [c.elapsed for c in flood]
    print(
        f"\noverload: limit {LIMIT}, {len(flood)} flood calls in {flood_took:.1f} s at concurrency "
        f"{FLOOD_CONCURRENCY}; refusal latency p50/p99/max {percentile(latencies, 50):.3f} / "
        f"{percentile(latencies, 99):.3f} / {max(latencies):.3f} s; RSS {rss_before:.0f} -> {rss_after:.0f} MB"
    )
    assert len(flood) >= FLOOD_CONCURRENCY
    wrong = [c for c in flood if (c.code, c.reason) != ("RESOURCE_EXHAUSTED", "OVERLOADED")]
    assert not wrong, f"{len(wrong)} flood calls were not refused as OVERLOADED, e.g. {wrong[0]}"
    assert all(c.retry_info and c.error_infos == 1 for c in flood)
    assert upstream_requests == LIMIT, "a refused call reached the upstream"
    # "At once": nowhere near the SLOW seconds a slot would take to free up.
    assert percentile(latencies, 99) < 1.0 and max(latencies) < SLOW / 2
    assert flood_took < SLOW, "the flood outlived the held calls: the test proved less than it should"
    for call in held_results:
        assert (call.code, call.content) == ("OK", f"Echo: {call.message}"), call
    assert state.in_flight == 0
    assert rss_after - rss_before < RSS_GROWTH_BOUND_MB


async def _flood(stub: pb_grpc.GPTServiceStub, until: float) -> list[CallResult]:
    """Callers beyond the limit, FLOOD_CONCURRENCY at a time, until `until` or FLOOD_MAX_CALLS."""
    results: list[CallResult] = []
    count = 0

    async def caller() -> None:
        nonlocal count
        while time.monotonic() < until and count < FLOOD_MAX_CALLS:
            count += 1
            index = count
            results.append(await one_call(stub, index, index % 2 == 0, f"flood call {index}", 10))

    await asyncio.gather(*(caller() for _ in range(FLOOD_CONCURRENCY)))
    return results
