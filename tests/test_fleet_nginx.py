"""nginx (deploy/nginx/gpt-grpc.conf) in front of 3 gateway replicas, all real processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import grpc
import pytest
import pytest_asyncio
from gptgrpc.v1 import gateway_pb2 as pb
from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc

from tests.conftest import TEST_KEY
from tests.fleet import Fleet
from tests.helpers import details, fail
from tests.standin import Fault, Standin

REPLICAS = 3
# Bigger than nginx's default client_max_body_size (1 MiB), smaller than the gateway's 16 MiB.
BIG_TEXT_BYTES = 2 * 1024 * 1024
# Beyond the gateway's limit (16 MiB) and the shipped client_max_body_size (17m).
TOO_BIG_TEXT_BYTES = 18 * 1024 * 1024
LOAD_CALLS = 30
# How long the stand-in holds each call of the load, so that all are in flight at the kill.
HOLD_SECONDS = 6.0
WAIT_SECONDS = 15.0
# Between two chunks of a stream the stand-in slows down; the echo of STREAMED_TEXT has ~20.
CHUNK_SECONDS = 0.2
STREAMED_TEXT = " ".join(f"w{i}" for i in range(20))


# One event loop for the module: the stand-in and the shared fleet live across its tests.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def upstream() -> AsyncIterator[Standin]:
    async with Standin(host="127.0.0.1", port=0, api_keys={TEST_KEY}) as s:
        yield s


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_fleet(upstream: Standin) -> AsyncIterator[Fleet]:
    """For the tests that leave every replica as it was (the kill tests start their own)."""
    async with Fleet(upstream.base_url, REPLICAS, nginx=True) as f:
        yield f


@pytest.fixture
def standin(upstream: Standin) -> Iterator[Standin]:
    upstream.reset()
    yield upstream
    upstream.reset()


@contextlib.asynccontextmanager
async def nginx_stub(fleet: Fleet) -> AsyncIterator[pb_grpc.GPTServiceStub]:
    # Clients may send more than gRPC's default 4 MiB; the gateway and nginx set their own limits.
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(fleet.target, options=options) as channel:
        yield pb_grpc.GPTServiceStub(channel)


@pytest_asyncio.fixture(loop_scope="module")
async def stub(shared_fleet: Fleet) -> AsyncIterator[pb_grpc.GPTServiceStub]:
    async with nginx_stub(shared_fleet) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="module")
async def own_fleet(upstream: Standin) -> AsyncIterator[tuple[Fleet, pb_grpc.GPTServiceStub]]:
    async with Fleet(upstream.base_url, REPLICAS, nginx=True) as f, nginx_stub(f) as s:
        yield f, s


def _chat(text: str = "hello fleet") -> pb.ChatCompletionRequest:
    return pb.ChatCompletionRequest(model="gpt-4o-mini", user_message=text)


async def test_calls_through_nginx_are_spread_over_every_replica(
    shared_fleet: Fleet, stub: pb_grpc.GPTServiceStub
) -> None:
    fleet, nginx = shared_fleet, shared_fleet.nginx
    assert nginx is not None
    before = [r.served("ChatCompletion") for r in fleet.replicas]
    relayed_before = len(nginx.access_lines())
    calls = 30
    for _ in range(calls // 2):  # one after the other...
        await stub.ChatCompletion(_chat())
    await asyncio.gather(*(stub.ChatCompletion(_chat()) for _ in range(calls - calls // 2)))  # ...and together
    served = [r.served("ChatCompletion") - b for r, b in zip(fleet.replicas, before, strict=True)]
    assert sum(served) == calls, served
    assert all(n > 0 for n in served), f"a replica got no call: {served}"
    # nginx's own access log names the replica of every call, with the grpc-status trailer it
    # relayed. nginx writes a line after the call's last frame went out: wait for the last ones.

    async def all_logged() -> bool:
        return len(nginx.access_lines()) - relayed_before >= calls

    await _until("nginx logged every call", all_logged)
    relayed = nginx.access_lines()[relayed_before:]
    assert len(relayed) == calls and all("/ChatCompletion" in line for line in relayed)
    assert all("grpc_status=0" in line for line in relayed)
    assert {line.split("upstream=")[1].split()[0] for line in relayed} == set(fleet.addresses)


async def test_unary_stream_and_error_details_survive_nginx(stub: pb_grpc.GPTServiceStub, standin: Standin) -> None:
    reply = await stub.ChatCompletion(_chat("through nginx"))
    assert "through nginx" in reply.content

    deltas, summaries = [], []
    async for message in stub.StreamChatCompletion(pb.StreamChatCompletionRequest(user_message="one two three")):
        (deltas if message.HasField("delta") else summaries).append(message)
    assert "".join(m.delta.content for m in deltas).endswith("one two three")
    assert len(deltas) > 1 and len(summaries) == 1 and summaries[0].summary.usage.total_tokens > 0

    # An upstream error keeps its code, message, ErrorInfo and trailers through nginx.
    standin.enqueue(Fault("model_not_found"))
    raw = await fail(stub.ChatCompletion(_chat(), metadata=(("x-request-id", "req-through-nginx"),)))
    err = details(raw)
    assert err.code == grpc.StatusCode.NOT_FOUND and err.reason == "UPSTREAM_NOT_FOUND"
    assert err.error_infos[0].domain == "gpt-grpc" and "does not exist" in err.message
    assert ("x-request-id", "req-through-nginx") in tuple(raw.trailing_metadata() or ())

    # The same for a stream that fails before its first delta.
    standin.enqueue(Fault("unauthorized"))
    stream = stub.StreamChatCompletion(pb.StreamChatCompletionRequest(user_message="x"))
    stream_err = details(await fail(_drain(stream)))
    assert stream_err.code == grpc.StatusCode.UNAUTHENTICATED
    assert stream_err.reason == "UPSTREAM_AUTHENTICATION_FAILED"


async def _drain(call: object) -> None:
    async for _ in call:  # type: ignore[attr-defined]
        pass


async def test_request_sizes_through_nginx(stub: pb_grpc.GPTServiceStub) -> None:
    # Over nginx's default 1 MiB body limit: the shipped config lets the gateway decide.
    big = await stub.CountTokens(pb.CountTokensRequest(text="a " * (BIG_TEXT_BYTES // 2)), timeout=30)
    assert big.token_count > 0
    # Over the gateway's 16 MiB: RESOURCE_EXHAUSTED, a gRPC status (the gateway's own; nginx's
    # error page says the same when its limit trips first), not an HTML 413 page.
    err = await fail(stub.CountTokens(pb.CountTokensRequest(text="a" * TOO_BIG_TEXT_BYTES), timeout=30))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err


async def _in_flight(fleet: Fleet) -> list[float]:
    return [await r.metric("gpt_grpc_calls_in_flight") for r in fleet.replicas]


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = WAIT_SECONDS) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {timeout:g}s: {what}")
        await asyncio.sleep(0.05)


async def _outcome(call: object) -> str:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    return "OK"


async def test_kill_9_of_a_replica_under_load(
    own_fleet: tuple[Fleet, pb_grpc.GPTServiceStub], standin: Standin
) -> None:
    """Its calls in flight fail UNAVAILABLE at once; every other call, then every new call, succeeds."""
    fleet, stub = own_fleet
    standin.enqueue(*[Fault("slow", delay=HOLD_SECONDS)] * LOAD_CALLS)
    load = [asyncio.ensure_future(_outcome(stub.ChatCompletion(_chat(), timeout=30))) for _ in range(LOAD_CALLS)]
    try:

        async def all_in_flight() -> bool:
            return sum(await _in_flight(fleet)) == LOAD_CALLS

        await _until("all calls in flight", all_in_flight)
        victim = fleet.replicas[0]
        lost = int(await victim.metric("gpt_grpc_calls_in_flight"))
        assert lost > 0, "least_conn gave the victim no call"
        victim.kill()
        # Bounded: no call may hang (the survivors' calls end after HOLD_SECONDS).
        outcomes = await asyncio.wait_for(asyncio.gather(*load), timeout=HOLD_SECONDS + WAIT_SECONDS)
    finally:
        for task in load:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*load, return_exceptions=True)

    failed = [o for o in outcomes if o != "OK"]
    assert len(failed) == lost, outcomes
    assert all(o.startswith("UNAVAILABLE: nginx: no gateway replica answered") for o in failed), failed
    survivors = fleet.replicas[1:]
    assert sum(r.served("ChatCompletion") for r in survivors) == LOAD_CALLS - lost

    # New calls: the dead replica is tried at most once (connection refused, passed to the next
    # replica before anything was sent) and then left out for fail_timeout: all succeed.
    after = await asyncio.gather(*(_outcome(stub.ChatCompletion(_chat(), timeout=30)) for _ in range(LOAD_CALLS)))
    assert after == ["OK"] * LOAD_CALLS
    assert sum(r.served("ChatCompletion") for r in survivors) == 2 * LOAD_CALLS - lost
    assert "upstream server temporarily disabled" in fleet.nginx.error_log.read_text()  # type: ignore[union-attr]


async def test_kill_9_during_streams(own_fleet: tuple[Fleet, pb_grpc.GPTServiceStub], standin: Standin) -> None:
    """A stream that already sent deltas when its replica died ends INTERNAL through nginx.

    nginx has sent the response headers, so it cannot answer a status any more: it resets the
    HTTP/2 stream with INTERNAL_ERROR, which gRPC reports as INTERNAL (a direct connection to
    the replica would report UNAVAILABLE). Nothing hangs, the other streams finish, and the
    caller must not retry a half-received answer blindly in either case.
    """
    fleet, stub = own_fleet
    streams = 6
    standin.enqueue(*[Fault("slow_stream", delay=CHUNK_SECONDS)] * streams)
    received = [0] * streams

    async def stream(i: int) -> str:
        call = stub.StreamChatCompletion(pb.StreamChatCompletionRequest(user_message=STREAMED_TEXT), timeout=30)
        try:
            async for _ in call:
                received[i] += 1
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return "OK"

    tasks = [asyncio.ensure_future(stream(i)) for i in range(streams)]

    async def all_streaming() -> bool:
        return all(received)

    await _until("every stream received its first delta", all_streaming)
    victim = fleet.replicas[0]
    lost = int(await victim.metric("gpt_grpc_calls_in_flight"))
    victim.kill()  # its streams have most of their chunks still to come
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks), timeout=WAIT_SECONDS)
    failed = [o for o in outcomes if o != "OK"]
    assert len(failed) == lost > 0, outcomes
    assert all(code == "INTERNAL" for code in failed), outcomes
