"""The server process: start-up from the environment, SIGTERM drains calls and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb
from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import ADMIN_TOKEN, TEST_KEY
from tests.helpers import details
from tests.standin import Standin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_serving(channel: grpc.aio.Channel, timeout: float = 20.0) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    async with asyncio.timeout(timeout):
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.05)


class ServerProcess:
    def __init__(self, standin: Standin, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        full_env = {
            **os.environ,
            "OPENAI_API_KEY": TEST_KEY,
            "OPENAI_BASE_URL": standin.base_url,
            "GPT_GRPC_ADMIN_TOKEN": ADMIN_TOKEN,
            "GPT_GRPC_PORT": str(self.port),
            **(env or {}),
        }
        # A file, not a pipe: nobody reads a pipe until the end, and a full one
        # would block the server's logging (one line per call).
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpt_grpc.server", *args],
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        self.proc.wait(timeout=30)
        self.log.seek(0)
        return self.log.read().decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
async def process(standin: Standin) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(standin, "--grace-period", "20")
    try:
        yield server
    finally:
        server.close()


async def test_configured_from_the_environment(process: ServerProcess, standin: Standin) -> None:
    async with grpc.aio.insecure_channel(process.target) as channel:
        await wait_serving(channel)
        stub = pb_grpc.GPTServiceStub(channel)
        conf = (await stub.GetConfiguration(pb.GetConfigurationRequest())).configuration
        assert conf.endpoint == standin.base_url and conf.api_key_set
        reply = await stub.ChatCompletion(pb.ChatCompletionRequest(user_message="env"))
        assert reply.content == "Echo: env"
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=20) == 0
    assert TEST_KEY not in process.output()


async def test_sigterm_drains_500_streams_and_exits_zero(process: ServerProcess, standin: Standin) -> None:
    calls = 500
    standin.set_reply(content=" ".join(f"w{i}" for i in range(20)), chunks=20)
    standin.set_random_faults(rate=1.0, kinds=["slow_stream"], seed=1, delay=0.1)  # ~2 s a stream
    async with grpc.aio.insecure_channel(process.target) as channel:
        await wait_serving(channel)
        stub = pb_grpc.GPTServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        async def one() -> str:
            text = []
            async for event in stub.StreamChatCompletion(pb.StreamChatCompletionRequest(user_message="go"), timeout=60):
                if event.HasField("delta"):
                    text.append(event.delta.content)
                else:
                    assert event.summary.finish_reason == pb.FINISH_REASON_STOP
            return "".join(text)

        tasks = [asyncio.ensure_future(one()) for _ in range(calls)]
        await standin.wait_for(lambda s: len(s.requests) == calls, timeout=30)
        process.proc.send_signal(signal.SIGTERM)
        # Health says NOT_SERVING at once, and a new call is refused with UNAVAILABLE.
        async with asyncio.timeout(5):
            while (await health.Check(health_pb2.HealthCheckRequest())).status != (
                health_pb2.HealthCheckResponse.NOT_SERVING
            ):
                await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ChatCompletion(pb.ChatCompletionRequest(user_message="late"), timeout=5)
        err = details(refused.value)
        assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
        texts = await asyncio.gather(*tasks)
    expected = " ".join(f"w{i}" for i in range(20))
    assert texts == [expected] * calls  # every accepted call completed in full
    assert process.proc.wait(timeout=30) == 0
