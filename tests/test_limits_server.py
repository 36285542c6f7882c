"""Client limits through the real server: reservations hold concurrent calls, unpriced models,
per-client calls in flight (issue 9 items 4 and 6)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from gpt_grpc.limits import FallbackPrice
from gpt_grpc.server.app import ServerConfig
from tests.conftest import ADMIN, ADMIN_TOKEN, Gateway, fast_upstream, start_gateway, stop_gateway
from tests.helpers import details, fail
from tests.standin import Fault, Standin

CONCURRENT_CALLS = 50


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def create(gw: Gateway, name: str, **limits: object) -> str:
    reply = await gw.stub.CreateClient(
        pb.CreateClientRequest(name=name, limits=pb.ClientLimits(**limits)),  # type: ignore[arg-type]
        metadata=ADMIN,
    )
    return reply.token


@pytest.fixture
async def gw(standin: Standin) -> AsyncIterator[Gateway]:
    config = ServerConfig(port=0, admin_token=ADMIN_TOKEN, upstream=fast_upstream(standin.base_url))
    gateway = await start_gateway(config)
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)


async def burst(gw: Gateway, token: str, request: pb.ChatCompletionRequest) -> list[pb.ChatCompletionResponse | str]:
    """CONCURRENT_CALLS calls at once: each reply, or the reason it was refused."""

    async def one() -> pb.ChatCompletionResponse | str:
        try:
            return await gw.stub.ChatCompletion(request, metadata=bearer(token), timeout=30)
        except grpc.aio.AioRpcError as err:
            return details(err).reason

    return await asyncio.gather(*(one() for _ in range(CONCURRENT_CALLS)))


async def test_concurrent_calls_cannot_overspend_a_budget(gw: Gateway, standin: Standin) -> None:
    # Every call is held upstream a moment, so all 50 are in flight at once; a check at admission
    # alone let them all through (68x the budget in the review).
    standin.enqueue(*[Fault(kind="slow", delay=0.3) for _ in range(CONCURRENT_CALLS)])
    budget = 0.0001
    token = await create(gw, "spender", budget_usd=budget, budget_period=pb.BUDGET_PERIOD_DAY)
    request = pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="hello budget", max_tokens=50)
    results = await burst(gw, token, request)
    served = [r for r in results if not isinstance(r, str)]
    refused = [r for r in results if isinstance(r, str)]
    spent = sum(r.cost_usd for r in served)
    assert served and set(refused) == {"CLIENT_BUDGET_EXCEEDED"}
    # Each call reserved prompt + max_tokens, more than it used: no overspend at all.
    assert 0 < spent <= budget
    usage = await gw.stub.GetUsage(pb.GetUsageRequest(client="spender"), metadata=ADMIN)
    assert usage.total.requests == len(served) and usage.total.cost_usd == pytest.approx(spent)


async def test_concurrent_calls_cannot_overrun_a_token_limit(gw: Gateway, standin: Standin) -> None:
    standin.enqueue(*[Fault(kind="slow", delay=0.3) for _ in range(CONCURRENT_CALLS)])
    limit = 600
    token = await create(gw, "wordy", tokens_per_minute=limit)
    request = pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="hello tokens", max_tokens=50)
    results = await burst(gw, token, request)
    served = [r for r in results if not isinstance(r, str)]
    assert served and {r for r in results if isinstance(r, str)} == {"CLIENT_RATE_LIMITED"}
    assert sum(r.usage.total_tokens for r in served) <= limit  # 30x the limit in the review


async def test_budgeted_client_and_unpriced_model(gw: Gateway, standin: Standin) -> None:
    budgeted = await create(gw, "budgeted", budget_usd=5.0, budget_period=pb.BUDGET_PERIOD_MONTH)
    free = await create(gw, "free")
    unpriced = pb.ChatCompletionRequest(model="my-local-llama", user_message="hi", max_tokens=10)
    err = details(await fail(gw.stub.ChatCompletion(unpriced, metadata=bearer(budgeted))))
    assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CLIENT_MODEL_UNPRICED")
    assert "--unpriced-model-price" in err.message and standin.requests == []
    # A client without a budget is not concerned.
    assert (await gw.stub.ChatCompletion(unpriced, metadata=bearer(free))).content == "Echo: hi"


async def test_fallback_price_counts_unpriced_models(standin: Standin) -> None:
    config = ServerConfig(
        port=0,
        admin_token=ADMIN_TOKEN,
        upstream=fast_upstream(standin.base_url),
        unpriced_model_price=FallbackPrice(1000.0, 1000.0),  # $0.001 a token: a few calls use the budget
    )
    gw = await start_gateway(config)
    try:
        token = await create(gw, "local", budget_usd=0.05, budget_period=pb.BUDGET_PERIOD_DAY)
        unpriced = pb.ChatCompletionRequest(model="my-local-llama", user_message="hi", max_tokens=5)
        for _ in range(10):
            try:
                await gw.stub.ChatCompletion(unpriced, metadata=bearer(token))
            except grpc.aio.AioRpcError as err:
                assert details(err).reason == "CLIENT_BUDGET_EXCEEDED"
                break
        else:
            raise AssertionError("the fallback price never counted")
        clients = (await gw.stub.ListClients(pb.ListClientsRequest(), metadata=ADMIN)).clients
        assert 0 < clients[0].period_spend_usd <= 0.05
    finally:
        await stop_gateway(gw)


async def test_max_in_flight_per_client(gw: Gateway, standin: Standin) -> None:
    greedy = await create(gw, "greedy", max_in_flight=2)
    other = await create(gw, "other")
    standin.enqueue(Fault(kind="slow_stream", delay=0.5), Fault(kind="slow_stream", delay=0.5))
    request = pb.StreamChatCompletionRequest(model="gpt-4o-mini", user_message="a long answer to hold")
    held = [gw.stub.StreamChatCompletion(request, metadata=bearer(greedy), timeout=30) for _ in range(2)]
    for stream in held:
        await stream.read()  # the first delta: both streams are in flight
    third = gw.stub.StreamChatCompletion(request, metadata=bearer(greedy), timeout=30)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await third.read()
    err = details(info.value)
    assert (err.code, err.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CLIENT_IN_FLIGHT_LIMITED")
    assert err.retry_info is not None
    # Another client still gets through while greedy holds its share.
    reply = await gw.stub.ChatCompletion(pb.ChatCompletionRequest(user_message="me too"), metadata=bearer(other))
    assert reply.content == "Echo: me too"
    for stream in held:
        while await stream.read() != grpc.aio.EOF:
            pass
    # Slots come back when the calls end.
    assert (await gw.stub.ChatCompletion(pb.ChatCompletionRequest(user_message="x"), metadata=bearer(greedy))).content
    listed = await gw.stub.ListClients(pb.ListClientsRequest(), metadata=ADMIN)
    assert {c.name: c.limits.max_in_flight for c in listed.clients} == {"greedy": 2, "other": 0}
    assert [c.limits.HasField("max_in_flight") for c in listed.clients] == [True, False]
