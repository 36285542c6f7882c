"""Client-side load balancing of the Python client (load_balancing=) over 3 live gateway replicas."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gpt_grpc_client import AsyncClient, Client, GatewayError
from gpt_grpc_client.balancing import HEALTH_SERVICE, balancing_options
from tests.conftest import TEST_KEY
from tests.fleet import Fleet
from tests.standin import Fault, Standin

REPLICAS = 3
CALLS = 30
WAIT_SECONDS = 15.0
# How long the stand-in holds the calls that must be in flight at a kill or a SIGTERM.
HOLD_SECONDS = 5.0

# The stand-in and the shared fleet live across the module's tests, in one event loop.
module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstream() -> AsyncIterator[Standin]:
    async with Standin(host="127.0.0.1", port=0, api_keys={TEST_KEY}) as s:
        yield s


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_fleet(upstream: Standin) -> AsyncIterator[Fleet]:
    """For the tests that leave every replica as it was."""
    async with Fleet(upstream.base_url, REPLICAS) as f:
        yield f


@pytest_asyncio.fixture(loop_scope="module")
async def own_fleet(upstream: Standin) -> AsyncIterator[Fleet]:
    async with Fleet(upstream.base_url, REPLICAS) as f:
        yield f


@pytest.fixture
def standin(upstream: Standin) -> Iterator[Standin]:
    upstream.reset()
    yield upstream
    upstream.reset()


def _served(fleet: Fleet) -> list[int]:
    return [r.served("ChatCompletion") for r in fleet.replicas]


def _delta(after: list[int], before: list[int]) -> list[int]:
    return [a - b for a, b in zip(after, before, strict=True)]


@module_loop
async def test_round_robin_spreads_calls_over_every_replica(shared_fleet: Fleet) -> None:
    before = _served(shared_fleet)
    with Client(shared_fleet.ipv4_target, load_balancing="round_robin", timeout=30) as gpt:
        answers = await asyncio.to_thread(lambda: [gpt.chat_completion(user_message="hi") for _ in range(CALLS)])
    assert all("hi" in a for a in answers)
    spread = _delta(_served(shared_fleet), before)
    assert sum(spread) == CALLS
    # Round robin over ready connections: every replica gets its share (the first calls may
    # go to the first connection ready while the others are still connecting).
    assert all(n >= CALLS // REPLICAS // 2 for n in spread), spread

    async with AsyncClient(shared_fleet.ipv4_target, load_balancing="round_robin", timeout=30) as agpt:
        await _until_connected_to_all(agpt, shared_fleet)
        before = _served(shared_fleet)
        await asyncio.gather(*(agpt.chat_completion(user_message="hi") for _ in range(CALLS)))
        async with agpt.stream_chat(user_message="streamed") as stream:
            assert "".join([d async for d in stream]).endswith("streamed")
    spread = _delta(_served(shared_fleet), before)
    assert sum(spread) == CALLS and all(n >= CALLS // REPLICAS // 2 for n in spread), spread


@module_loop
async def test_without_the_option_one_connection_takes_every_call(shared_fleet: Fleet) -> None:
    """gRPC's default policy (pick_first): the option above is what spreads the calls."""
    before = _served(shared_fleet)
    async with AsyncClient(shared_fleet.ipv4_target, timeout=30) as gpt:
        for _ in range(CALLS // 3):
            await gpt.chat_completion(user_message="hi")
    assert sorted(_delta(_served(shared_fleet), before)) == [0, 0, CALLS // 3]


@module_loop
async def test_a_draining_replica_gets_no_new_call(own_fleet: Fleet, standin: Standin) -> None:
    """SIGTERM: the replica reports NOT_SERVING while it finishes its calls; health checking skips it."""
    async with AsyncClient(own_fleet.ipv4_target, load_balancing="round_robin", timeout=30) as gpt:
        await _until_connected_to_all(gpt, own_fleet)
        # One call held by the upstream on each replica keeps them all busy...
        standin.enqueue(*[Fault("slow", delay=HOLD_SECONDS)] * REPLICAS)
        held = [asyncio.ensure_future(gpt.chat_completion(user_message="held")) for _ in range(REPLICAS)]
        await _until_in_flight(own_fleet, REPLICAS)
        draining = own_fleet.replicas[0]
        before = draining.served("ChatCompletion", None)
        draining.process.signal(signal.SIGTERM)  # ...so this one drains for a while
        await wait_not_serving(draining.target)
        await asyncio.sleep(0.5)  # the channel's health watch got the same news
        answers = await asyncio.gather(*(gpt.chat_completion(user_message="new") for _ in range(CALLS)))
        assert len(answers) == CALLS  # none refused with UNAVAILABLE / SHUTTING_DOWN
        assert all("held" in a for a in await asyncio.gather(*held))
    assert draining.served("ChatCompletion", None) - before == 1  # only its held call


@module_loop
async def test_a_killed_replica_is_skipped(own_fleet: Fleet, standin: Standin) -> None:
    async with AsyncClient(own_fleet.ipv4_target, load_balancing="round_robin", timeout=30) as gpt:
        await _until_connected_to_all(gpt, own_fleet)
        standin.enqueue(*[Fault("slow", delay=HOLD_SECONDS)] * CALLS)
        load = [asyncio.ensure_future(_outcome(gpt.chat_completion(user_message="x"))) for _ in range(CALLS)]
        await _until_in_flight(own_fleet, CALLS)
        victim = own_fleet.replicas[0]
        lost = int(await victim.metric("gpt_grpc_calls_in_flight"))
        victim.kill()
        outcomes = await asyncio.wait_for(asyncio.gather(*load), WAIT_SECONDS)
        assert sorted(outcomes) == ["OK"] * (CALLS - lost) + ["UNAVAILABLE"] * lost
        after = await asyncio.gather(*(_outcome(gpt.chat_completion(user_message="y")) for _ in range(CALLS)))
        assert after == ["OK"] * CALLS


@module_loop
async def test_streams_of_a_killed_replica_end_unavailable(own_fleet: Fleet, standin: Standin) -> None:
    """Mid-stream (deltas received), a direct connection lost reports UNAVAILABLE; the other streams finish."""
    streams = 6
    received = [0] * streams
    async with AsyncClient(own_fleet.ipv4_target, load_balancing="round_robin", timeout=30) as gpt:
        await _until_connected_to_all(gpt, own_fleet)
        standin.enqueue(*[Fault("slow_stream", delay=0.2)] * streams)

        async def stream(i: int) -> str:
            try:
                async with gpt.stream_chat(user_message=" ".join(f"w{n}" for n in range(20))) as chunks:
                    async for _ in chunks:
                        received[i] += 1
            except GatewayError as err:
                return err.code.name
            return "OK"

        tasks = [asyncio.ensure_future(stream(i)) for i in range(streams)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        while not all(received):  # every stream got its first delta; ~20 more are coming
            assert loop.time() < deadline, f"streams not started after {WAIT_SECONDS:g}s: {received}"
            await asyncio.sleep(0.02)
        victim = own_fleet.replicas[0]
        lost = int(await victim.metric("gpt_grpc_calls_in_flight"))
        victim.kill()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), WAIT_SECONDS)
    failed = [o for o in outcomes if o != "OK"]
    assert len(failed) == lost > 0, outcomes
    assert all(code == "UNAVAILABLE" for code in failed), outcomes


async def _until_connected_to_all(gpt: AsyncClient, fleet: Fleet) -> None:
    """Calls, one at a time, until every replica served one (bounded).

    round_robin rotates over the connections that are ready (connected, and SERVING by the
    health check): calls made in the channel's first milliseconds all go to the first
    replica that answered. A long-lived client is past that point; a test gets there first.
    """
    before = _served(fleet)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while not all(_delta(_served(fleet), before)):
        assert loop.time() < deadline, f"not connected to every replica after {WAIT_SECONDS:g}s"
        await gpt.chat_completion(user_message="warm")


async def wait_not_serving(target: str) -> None:
    """Until the replica's grpc.health.v1 says NOT_SERVING for the gateway's service (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=HEALTH_SERVICE), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                return
            assert loop.time() < deadline, f"{target} still SERVING {WAIT_SECONDS:g}s after SIGTERM"
            await asyncio.sleep(0.05)


async def _outcome(call: object) -> str:
    try:
        await call  # type: ignore[misc]
    except GatewayError as err:
        return err.code.name
    return "OK"


async def _until_in_flight(fleet: Fleet, calls: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while sum([await r.metric("gpt_grpc_calls_in_flight") for r in fleet.replicas]) < calls:
        assert loop.time() < deadline, f"{calls} calls not in flight after {WAIT_SECONDS:g}s"
        await asyncio.sleep(0.05)


def test_balancing_options() -> None:
    assert balancing_options(None, [("a", 1)]) == (("a", 1),)
    ((key, value),) = balancing_options("round_robin", [])
    assert key == "grpc.service_config"
    assert json.loads(value) == {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": HEALTH_SERVICE},
    }
    with pytest.raises(ValueError, match="unknown load_balancing"):
        balancing_options("random", [])
    with pytest.raises(ValueError, match="not both"):
        balancing_options("round_robin", [("grpc.service_config", "{}")])
