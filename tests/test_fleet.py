"""A fleet: 3 gateway replicas (separate processes) sharing one real redis-server (issue 10 item 8).

A client created on one replica works on the others; Configure reaches every
replica; rate limits, budgets and usage are fleet-wide; and Redis killed for
5 s during load costs no call and no usage.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from gptgrpc.v1 import gateway_pb2 as pb
from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc

from gpt_grpc.server.app import ConfigError, GatewayServer, ServerConfig
from tests.conftest import ADMIN, ADMIN_TOKEN, TEST_KEY, fast_upstream
from tests.helpers import details, fail
from tests.redis_server import RedisServer, free_port
from tests.standin import Fault, Standin
from tests.test_lifecycle import wait_serving

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPLICAS = 3
SECRET = "fleet-secret-key-for-tests-0123456789abcdef"
# Configure must reach the other replicas within 1 s (pub/sub, else the 0.5 s poll);
# the test allows more so that a loaded CI machine does not fail it spuriously.
PROPAGATION_ALLOWANCE_SECONDS = 3.0


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Fleet:
    redis: RedisServer
    standin: Standin
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    stubs: list[pb_grpc.GPTServiceStub] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)


@pytest.fixture(scope="module")
def fleet_redis() -> Iterator[RedisServer]:
    server = RedisServer(persistent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def spawn_replica(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "gpt_grpc.server"], env=env, stdout=out, stderr=out)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet(fleet_redis: RedisServer) -> AsyncIterator[Fleet]:
    async with Standin(host="127.0.0.1", port=0, api_keys={TEST_KEY}) as standin:
        f = Fleet(fleet_redis, standin)
        logdir = Path(tempfile.mkdtemp(prefix="gpt-grpc-fleet-"))
        try:
            for i in range(REPLICAS):
                port = free_port()
                env = {
                    **os.environ,
                    "GPT_GRPC_STORE": fleet_redis.url,
                    "GPT_GRPC_SECRET_KEY": SECRET,
                    "GPT_GRPC_ADMIN_TOKEN": ADMIN_TOKEN,
                    "OPENAI_API_KEY": TEST_KEY,
                    "OPENAI_BASE_URL": standin.base_url,
                    "GPT_GRPC_PORT": str(port),
                    "GPT_GRPC_LOG_LEVEL": "WARNING",
                    "GPT_GRPC_REQUEST_TIMEOUT": "10",
                }
                log = logdir / f"replica{i}.log"
                f.logs.append(log)
                f.procs.append(spawn_replica(env, log))
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
                f.channels.append(channel)
                f.stubs.append(pb_grpc.GPTServiceStub(channel))
            await asyncio.gather(*(wait_serving(c, timeout=60) for c in f.channels))
            yield f
        finally:
            for channel in f.channels:
                await channel.close()
            for proc in f.procs:
                proc.terminate()
            for proc in f.procs:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


async def create(stub: pb_grpc.GPTServiceStub, name: str, **limits: object) -> str:
    reply = await stub.CreateClient(
        pb.CreateClientRequest(name=name, limits=pb.ClientLimits(**limits)),  # type: ignore[arg-type]
        metadata=ADMIN,
    )
    return reply.token


async def test_a_client_created_on_one_replica_works_on_the_others(fleet: Fleet) -> None:
    a, b, c = fleet.stubs
    token = await create(a, "everywhere")
    for stub in (b, c):  # at once: the token is found in the store
        reply = await stub.ChatCompletion(pb.ChatCompletionRequest(user_message="hi"), metadata=bearer(token))
        assert reply.content == "Echo: hi"
    await c.RevokeClient(pb.RevokeClientRequest(name="everywhere"), metadata=ADMIN)
    async with asyncio.timeout(PROPAGATION_ALLOWANCE_SECONDS):
        while True:
            refusals = [
                details(err).reason
                for err in await asyncio.gather(
                    *(
                        s.ChatCompletion(pb.ChatCompletionRequest(user_message="x"), metadata=bearer(token))
                        for s in (a, b)
                    ),
                    return_exceptions=True,
                )
                if isinstance(err, grpc.aio.AioRpcError)
            ]
            if refusals == ["CLIENT_TOKEN_INVALID"] * 2:
                break
            await asyncio.sleep(0.05)


async def test_configure_on_one_replica_reaches_the_others(fleet: Fleet) -> None:
    a, b, c = fleet.stubs
    reply = await a.Configure(pb.ConfigureRequest(default_model="gpt-4.1-mini", api_key=TEST_KEY), metadata=ADMIN)
    configured = time.monotonic()
    generation = reply.configuration.generation
    async with asyncio.timeout(PROPAGATION_ALLOWANCE_SECONDS):
        while True:
            confs = await asyncio.gather(
                *(s.GetConfiguration(pb.GetConfigurationRequest(), metadata=ADMIN) for s in (b, c))
            )
            if {(x.configuration.default_model, x.configuration.generation) for x in confs} == {
                ("gpt-4.1-mini", generation)
            }:
                break
            await asyncio.sleep(0.01)
    print(f"Configure reached the other replicas in {time.monotonic() - configured:.3f}s")
    # The key set by Configure is in the store only sealed, and every replica opened it.
    raw = fleet.redis.command("GET", "gptgrpc:settings")
    assert b'"sealed"' in raw and TEST_KEY.encode() not in raw
    answer = await c.ChatCompletion(pb.ChatCompletionRequest(user_message="new settings"), metadata=ADMIN)
    assert answer.model == "gpt-4.1-mini"


async def test_a_rate_limit_holds_across_the_fleet(fleet: Fleet) -> None:
    token = await create(fleet.stubs[0], "sixty", requests_per_minute=60)
    request = pb.ChatCompletionRequest(user_message="r")

    async def one(i: int) -> str:
        try:
            await fleet.stubs[i % REPLICAS].ChatCompletion(request, metadata=bearer(token), timeout=30)
            return "OK"
        except grpc.aio.AioRpcError as err:
            return details(err).reason

    outcomes: list[str] = []
    for start in range(0, 120, 20):  # 120 calls, 20 at a time, spread over the 3 replicas
        outcomes += await asyncio.gather(*(one(i) for i in range(start, start + 20)))
    assert set(outcomes) == {"OK", "CLIENT_RATE_LIMITED"}
    print(f"60 requests a minute, 120 calls over {REPLICAS} replicas: {outcomes.count('OK')} answered")
    assert 57 <= outcomes.count("OK") <= 63


async def test_a_budget_holds_across_the_fleet(fleet: Fleet) -> None:
    budget = 0.0002
    token = await create(fleet.stubs[1], "budgeted", budget_usd=budget, budget_period=pb.BUDGET_PERIOD_DAY)
    fleet.standin.enqueue(*[Fault(kind="slow", delay=0.2) for _ in range(60)])
    request = pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="spend", max_tokens=40)

    async def one(i: int) -> pb.ChatCompletionResponse | str:
        try:
            return await fleet.stubs[i % REPLICAS].ChatCompletion(request, metadata=bearer(token), timeout=30)
        except grpc.aio.AioRpcError as err:
            return details(err).reason

    results = await asyncio.gather(*(one(i) for i in range(60)))
    served = [r for r in results if not isinstance(r, str)]
    assert served and {r for r in results if isinstance(r, str)} == {"CLIENT_BUDGET_EXCEEDED"}
    spent = sum(r.cost_usd for r in served)
    print(
        f"budget ${budget}: {len(served)} of 60 calls served, ${spent:.6f} spent ({spent / budget:.0%} of the budget)"
    )
    assert spent <= budget  # reserved at admission, fleet-wide: no overspend


async def test_usage_is_the_same_on_every_replica(fleet: Fleet) -> None:
    token = await create(fleet.stubs[2], "counted")
    before = await all_traffic(fleet)
    replies = await asyncio.gather(
        *(
            fleet.stubs[i % REPLICAS].ChatCompletion(
                pb.ChatCompletionRequest(user_message=f"u{i}"), metadata=bearer(token)
            )
            for i in range(30)
        )
    )
    tokens = sum(r.usage.total_tokens for r in replies)
    await settled(fleet, "counted", 30)
    for stub in fleet.stubs:
        usage = await stub.GetUsage(pb.GetUsageRequest(client="counted"), metadata=ADMIN)
        assert (usage.total.requests, usage.total.prompt_tokens + usage.total.completion_tokens) == (30, tokens)
    assert await all_traffic(fleet) - before == 30  # every replica answers the same fleet-wide total
    print(f"GetUsage on each of {REPLICAS} replicas: 30 requests, {tokens} tokens (as sent)")


async def all_traffic(fleet: Fleet, timeout: float = 15.0) -> int:
    """The all-traffic request count once every replica answers the same (earlier calls' settles written)."""
    async with asyncio.timeout(timeout):
        while True:
            totals = {(await s.GetUsage(pb.GetUsageRequest(), metadata=ADMIN)).total.requests for s in fleet.stubs}
            if len(totals) == 1:
                return totals.pop()
            await asyncio.sleep(0.1)


async def settled(fleet: Fleet, client: str, requests: int, timeout: float = 15.0) -> None:
    """Wait until every replica reports `requests` calls of `client` (settles are written in batches)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                counts = [
                    (await s.GetUsage(pb.GetUsageRequest(client=client), metadata=ADMIN)).total.requests
                    for s in fleet.stubs
                ]
            except grpc.aio.AioRpcError as err:  # a replica that has not yet seen the store come back
                assert details(err).reason == "STORE_UNAVAILABLE"
                counts = []
            if counts == [requests] * REPLICAS:
                return
            await asyncio.sleep(0.1)


async def test_redis_killed_for_5s_during_load(fleet: Fleet) -> None:
    # A client with limits: its calls need the store at admission (and fall back to this replica's own).
    token = await create(fleet.stubs[0], "steady", requests_per_minute=100_000, tokens_per_minute=10**9)
    request = pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="steady", max_tokens=20)
    failures: list[str] = []
    sent = 0
    stop = asyncio.Event()

    async def worker(i: int) -> None:
        nonlocal sent
        for n in range(2_000):  # bounded
            if stop.is_set():
                return
            try:
                await fleet.stubs[(i + n) % REPLICAS].ChatCompletion(request, metadata=bearer(token), timeout=10)
            except grpc.aio.AioRpcError as err:
                failures.append(details(err).reason)
            sent += 1

    workers = [asyncio.create_task(worker(i)) for i in range(6)]
    try:
        await asyncio.sleep(1.5)
        fleet.redis.kill()
        await asyncio.sleep(5.0)
        during = sent
        fleet.redis.start()  # same port, same append-only file
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    print(f"redis-server killed for 5 s: {sent} calls sent ({during} before it came back), {len(failures)} failed")
    assert failures == []
    assert sent > during > 0
    await settled(fleet, "steady", sent, timeout=20)
    for log in fleet.logs:  # one line when it went and one when it came back, not one per call
        lines = log.read_text().splitlines()
        assert sum("unreachable" in line for line in lines) == 1
        assert sum("reachable again" in line for line in lines) == 1


# -- secrets: in-process gateways on the session's Redis ------------------------------------


async def test_shared_store_without_secret_key_refuses_an_api_key(redis_url: str, standin: Standin) -> None:
    server = GatewayServer(
        ServerConfig(port=0, admin_token=ADMIN_TOKEN, upstream=fast_upstream(standin.base_url), store_url=redis_url)
    )
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GPTServiceStub(channel)
            err = details(await fail(stub.Configure(pb.ConfigureRequest(api_key=TEST_KEY), metadata=ADMIN)))
            assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SECRET_KEY_MISSING")
            assert "GPT_GRPC_SECRET_KEY" in err.message and TEST_KEY not in err.message
            # Settings without a key are shared all the same.
            await stub.Configure(pb.ConfigureRequest(default_model="gpt-4.1"), metadata=ADMIN)
    finally:
        await server.stop(grace=1.0)


async def test_a_replica_whose_secret_key_cannot_open_the_stored_key_refuses_to_start(
    redis_url: str, standin: Standin
) -> None:
    def config(secret: str) -> ServerConfig:
        return ServerConfig(
            port=0,
            admin_token=ADMIN_TOKEN,
            upstream=fast_upstream(standin.base_url),
            store_url=redis_url,
            secret_key=secret,
        )

    first = GatewayServer(config(SECRET))
    port = await first.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await pb_grpc.GPTServiceStub(channel).Configure(pb.ConfigureRequest(api_key=TEST_KEY), metadata=ADMIN)
    finally:
        await first.stop(grace=1.0)
    other = GatewayServer(config("another-secret-key-of-forty-characters-xx"))
    with pytest.raises(ConfigError, match="cannot decrypt the stored upstream key"):
        await other.start()
    same = GatewayServer(config(SECRET))  # the right secret starts, with the stored key
    await same.start()
    try:
        assert same.engine.settings.api_key == TEST_KEY
    finally:
        await same.stop(grace=1.0)
