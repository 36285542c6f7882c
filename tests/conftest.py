"""Shared fixtures: the stand-in upstream and the real gateway on loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc

from gpt_grpc.server.app import GatewayServer, ServerConfig
from gpt_grpc.settings import SettingsUpdate
from tests.pki import make_pki
from tests.redis_server import RedisServer
from tests.standin import Standin

TEST_KEY = "sk-test-0123456789abcdefghijklmnop"
ADMIN_TOKEN = "admin-token-for-tests-7f3a9c-0123456789abcdef"
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


@dataclass
class Gateway:
    server: GatewayServer
    target: str
    channel: grpc.aio.Channel
    stub: pb_grpc.GPTServiceStub


def fast_upstream(base_url: str, **overrides: object) -> SettingsUpdate:
    """Settings pointing at the stand-in with quick retries, so tests stay fast."""
    values: dict[str, object] = {
        "api_key": TEST_KEY,
        "endpoint": base_url,
        "max_attempts": 3,
        "initial_backoff": 0.01,
        "max_backoff": 0.05,
        "request_timeout": 5.0,
    }
    values.update(overrides)
    return SettingsUpdate(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Test certificates (see tests/pki.py), made once per run."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def standin() -> AsyncIterator[Standin]:
    async with Standin(host="127.0.0.1", port=0, api_keys={TEST_KEY}) as s:
        yield s


async def start_gateway(config: ServerConfig) -> Gateway:
    server = GatewayServer(config)
    port = await server.start()
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(target)
    return Gateway(server, target, channel, pb_grpc.GPTServiceStub(channel))


async def stop_gateway(gw: Gateway) -> None:
    await gw.channel.close()
    await gw.server.stop(grace=1.0)


@pytest.fixture
async def gateway(standin: Standin) -> AsyncIterator[Gateway]:
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        admin_token=ADMIN_TOKEN,
        upstream=fast_upstream(standin.base_url),
        retry_budget=False,
    )
    gw = await start_gateway(config)
    try:
        yield gw
    finally:
        await stop_gateway(gw)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session (tests flush it; fleet tests start their own)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis-server, emptied for this test."""
    assert redis_server.command("FLUSHALL").startswith(b"+OK")
    return redis_server.url
