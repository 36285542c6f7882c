"""--workers N: N processes on one port (SO_REUSEPORT), sharing clients, limits, usage and settings
through the Redis store, and one Prometheus scrape for all of them."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb
from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc

from gpt_grpc.server import workers
from gpt_grpc.server.app import ServerConfig
from tests.conftest import ADMIN, ADMIN_TOKEN, TEST_KEY
from tests.standin import Standin
from tests.test_lifecycle import free_port, wait_serving


def test_what_several_workers_need() -> None:
    assert workers.check(ServerConfig(workers=1, port=0)) is None
    assert "at least 1" in (workers.check(ServerConfig(workers=0)) or "")
    assert "fixed --port" in (workers.check(ServerConfig(workers=2, port=0)) or "")
    # A SQLite or in-memory store is one process's memory: refused, naming the alternative.
    for config in (
        ServerConfig(workers=2, port=5000, db_path="x.db"),
        ServerConfig(workers=2, port=5000, store_url="sqlite:///x.db"),
        ServerConfig(workers=2, port=5000, admin_token="t", state_file="s.json"),
    ):
        assert "--store redis://" in (workers.check(config) or "")
    assert workers.check(ServerConfig(workers=2, port=5000, store_url="redis://127.0.0.1:6379/0")) is None
    worker = workers.as_worker(ServerConfig(workers=2, port=5000, metrics_port=9100), 1)
    assert worker.reuse_port and worker.metrics_port is None  # the parent serves all workers' metrics


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gpt_grpc.server", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@pytest.fixture
async def two_workers(standin: Standin, redis_url: str) -> AsyncIterator[tuple[str, int, int]]:
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "OPENAI_API_KEY": TEST_KEY,
        "OPENAI_BASE_URL": standin.base_url,
        "GPT_GRPC_ADMIN_TOKEN": ADMIN_TOKEN,
        "GPT_GRPC_PORT": str(port),
        "GPT_GRPC_LOG_LEVEL": "WARNING",
        "GPT_GRPC_STORE": redis_url,
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = _spawn(["--workers", "2", "--metrics-port", str(metrics_port)], env)
    try:
        yield f"127.0.0.1:{port}", proc.pid, metrics_port
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                for child in _children(proc.pid):
                    os.kill(child, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=10)


def _channel(target: str, i: int) -> grpc.aio.Channel:
    # Its own connection, so the kernel may hand it to either worker.
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1), ("test.channel", i)])


async def test_two_workers_share_configure_clients_limits_and_one_scrape(two_workers: tuple[str, int, int]) -> None:
    target, parent, metrics_port = two_workers
    channels = [_channel(target, i) for i in range(12)]
    try:
        for channel in channels:
            await wait_serving(channel)
        assert len(_children(parent)) == 2
        stubs = [pb_grpc.GPTServiceStub(c) for c in channels]
        replies = await asyncio.gather(
            *(s.ChatCompletion(pb.ChatCompletionRequest(user_message=f"w{i}"), timeout=20) for i, s in enumerate(stubs))
        )
        assert [r.content for r in replies] == [f"Echo: w{i}" for i in range(len(stubs))]
        # Configure lands in one worker; the others install it from the store.
        await stubs[0].Configure(pb.ConfigureRequest(default_model="gpt-4.1-mini"), metadata=ADMIN, timeout=10)
        async with asyncio.timeout(10):
            while True:
                confs = await asyncio.gather(*(s.GetConfiguration(pb.GetConfigurationRequest()) for s in stubs))
                if {c.configuration.default_model for c in confs} == {"gpt-4.1-mini"}:
                    break
                await asyncio.sleep(0.2)
        # A client and its limit hold across workers: 5 a minute, 12 calls over 12 connections.
        created = await stubs[0].CreateClient(
            pb.CreateClientRequest(name="w", limits=pb.ClientLimits(requests_per_minute=5)), metadata=ADMIN
        )
        auth = (("authorization", f"Bearer {created.token}"),)
        outcomes = await asyncio.gather(
            *(s.ChatCompletion(pb.ChatCompletionRequest(user_message="x"), metadata=auth) for s in stubs),
            return_exceptions=True,
        )
        assert sum(not isinstance(o, BaseException) for o in outcomes) == 5
        async with asyncio.timeout(10):  # each worker writes its calls' usage within FLUSH_SECONDS
            while True:
                usage = await asyncio.gather(
                    *(s.GetUsage(pb.GetUsageRequest(client="w"), metadata=ADMIN) for s in stubs)
                )
                if {u.total.requests for u in usage} == {5}:
                    break
                await asyncio.sleep(0.05)
        # One scrape shows the calls of both workers.
        text = await asyncio.to_thread(_scrape, metrics_port)
        calls = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('gpt_grpc_calls_total{code="OK",method="ChatCompletion"}')
        )
        assert calls == len(stubs) + 5
    finally:
        for channel in channels:
            await channel.close()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()  # type: ignore[no-any-return]


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed")
def test_loop_runner_picks_uvloop_when_installed() -> None:
    import uvloop

    assert workers.loop_runner("auto") is uvloop.run
    assert workers.loop_runner("asyncio") is asyncio.run


def test_bad_worker_settings_stop_the_start() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gpt_grpc.server", "--workers", "2", "--port", "0"],
        env={**os.environ, "OPENAI_API_KEY": TEST_KEY},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2 and "fixed --port" in run.stderr
