"""--workers N: N processes on one port (SO_REUSEPORT), settings shared through the state file."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

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
    assert "--db" in (workers.check(ServerConfig(workers=2, port=5000, db_path="x.db")) or "")
    assert "--state-file" in (workers.check(ServerConfig(workers=2, port=5000, admin_token="t")) or "")
    assert workers.check(ServerConfig(workers=2, port=5000, admin_token="t", state_file="s.json")) is None
    worker = workers.as_worker(ServerConfig(workers=2, port=5000, metrics_port=9100), 1)
    assert worker.reuse_port and worker.metrics_port == 9101


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gpt_grpc.server", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@pytest.fixture
async def two_workers(standin: Standin) -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    state_dir = tempfile.mkdtemp(prefix="gpt-grpc-workers-")
    state = Path(state_dir) / "state.json"
    env = {
        **os.environ,
        "OPENAI_API_KEY": TEST_KEY,
        "OPENAI_BASE_URL": standin.base_url,
        "GPT_GRPC_ADMIN_TOKEN": ADMIN_TOKEN,
        "GPT_GRPC_PORT": str(port),
        "GPT_GRPC_LOG_LEVEL": "WARNING",
    }
    proc = _spawn(["--workers", "2", "--state-file", str(state)], env)
    try:
        yield f"127.0.0.1:{port}", proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                for child in _children(proc.pid):
                    os.kill(child, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=10)


def _channel(target: str, i: int) -> grpc.aio.Channel:
    # Its own connection, so the kernel may hand it to either worker.
    return grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1), ("test.channel", i)])


async def test_two_workers_serve_one_port_and_share_configure(two_workers: tuple[str, int]) -> None:
    target, parent = two_workers
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
        # Configure lands in one worker; the other installs it from the state file.
        await stubs[0].Configure(pb.ConfigureRequest(default_model="gpt-4.1-mini"), metadata=ADMIN, timeout=10)
        async with asyncio.timeout(10):
            while True:
                confs = await asyncio.gather(*(s.GetConfiguration(pb.GetConfigurationRequest()) for s in stubs))
                if {c.configuration.default_model for c in confs} == {"gpt-4.1-mini"}:
                    break
                await asyncio.sleep(0.2)
    finally:
        for channel in channels:
            await channel.close()


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
