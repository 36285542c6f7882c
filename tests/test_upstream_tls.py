"""HTTPS to the upstream, as to api.openai.com: both transports verify the certificate and map failures alike."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from gpt_grpc.server.app import ServerConfig
from tests.conftest import ADMIN_TOKEN, TEST_KEY, Gateway, fast_upstream, start_gateway, stop_gateway
from tests.helpers import details, fail
from tests.standin import Fault, Standin

HI = pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="over https")


@pytest.fixture
async def https_standin(pki: Path) -> AsyncIterator[Standin]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    async with Standin(api_keys={TEST_KEY}, ssl_context=context) as s:
        yield s


async def gateway_trusting(ca: Path, standin: Standin, transport: str, monkeypatch: pytest.MonkeyPatch) -> Gateway:
    # The gateway trusts what the system trusts; SSL_CERT_FILE points that at the test CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    monkeypatch.setenv("GPT_GRPC_UPSTREAM_TRANSPORT", transport)
    config = ServerConfig(port=0, admin_token=ADMIN_TOKEN, upstream=fast_upstream(standin.base_url))
    return await start_gateway(config)


@pytest.mark.parametrize("transport", ["fast", "httpx"])
async def test_https_upstream(
    transport: str, https_standin: Standin, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert https_standin.base_url.startswith("https://")
    gw = await gateway_trusting(pki / "ca.pem", https_standin, transport, monkeypatch)
    try:
        assert (await gw.stub.ChatCompletion(HI, timeout=10)).content == "Echo: over https"
        stream = pb.StreamChatCompletionRequest(user_message="streamed over https")
        events = [e async for e in gw.stub.StreamChatCompletion(stream, timeout=10)]
        assert "".join(e.delta.content for e in events[:-1]) == "Echo: streamed over https"
        https_standin.enqueue(*[Fault(kind="server_error")] * 3)
        err = details(await fail(gw.stub.ChatCompletion(HI, timeout=10)))
        assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
        # Keep-alive over TLS: the calls above shared the pool's connections.
        assert https_standin.total_connections < len(https_standin.requests)
    finally:
        await stop_gateway(gw)


@pytest.mark.parametrize("transport", ["fast", "httpx"])
async def test_untrusted_upstream_certificate_is_refused(
    transport: str, https_standin: Standin, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await gateway_trusting(pki / "rogue-ca.pem", https_standin, transport, monkeypatch)
    try:
        err = details(await fail(gw.stub.ChatCompletion(HI, timeout=10)))
        assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
        assert https_standin.requests == []  # no prompt went to an unverified server
    finally:
        await stop_gateway(gw)
