"""The gRPC tools users already have, against a gateway process, through reflection alone.

grpcurl lists, describes (services, methods, messages, enums) and calls the three
main RPCs; ghz loads them; grpc-health-probe sees SERVING, then NOT_SERVING after
SIGTERM while a call drains. None of them is given a .proto file: everything they
know comes from server reflection (issue 11 item 6). The tools are pinned and built
by `make grpc-tools` (tests/tools/tools.mk), which `make test` runs first.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb
from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc

from tests.standin import Standin
from tests.test_lifecycle import ServerProcess, wait_serving

BIN = Path(__file__).parent / "tools" / ".bin"
SERVICE = "gptgrpc.v1.GPTService"
TOOL_SECONDS = 60
# grpc-health-probe's exit codes (its README): 0 SERVING, 4 anything else the server answered.
PROBE_SERVING, PROBE_UNHEALTHY = 0, 4


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def run(tool: str, *args: str) -> Ran:
    path = BIN / tool
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make grpc-tools` (make test does it first)")
    proc = await asyncio.create_subprocess_exec(
        str(path), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(TOOL_SECONDS):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


async def grpcurl(target: str, *verb: str, data: str | None = None) -> Ran:
    """grpcurl [flags] address verb... (a verb: `list`, `describe SYMBOL` or a method to call)."""
    flags = ["-plaintext", "-max-time", "20", *(["-d", data] if data is not None else [])]
    return await run("grpcurl", *flags, target, *verb)


@pytest.fixture
async def gateway_process(standin: Standin) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(standin, "--grace-period", "30")
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            await wait_serving(channel)
        yield server
    finally:
        server.close()


async def test_grpcurl_lists_describes_and_calls_through_reflection(gateway_process: ServerProcess) -> None:
    target = gateway_process.target
    listed = await grpcurl(target, "list")
    assert listed.code == 0, listed.err
    assert listed.out.split() == [
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    methods = await grpcurl(target, "list", SERVICE)
    assert methods.code == 0, methods.err
    assert {f"{SERVICE}.{m}" for m in ("ChatCompletion", "StreamChatCompletion", "CountTokens")} <= set(
        methods.out.split()
    )

    service = await grpcurl(target, "describe", SERVICE)
    assert service.code == 0, service.err
    assert "rpc StreamChatCompletion ( .gptgrpc.v1.StreamChatCompletionRequest ) returns ( stream " in service.out

    # A method by its own name: NOT_FOUND before (grpc/grpc#34743).
    expected = {
        "CountTokens": "rpc CountTokens ( .gptgrpc.v1.CountTokensRequest ) returns "
        "( .gptgrpc.v1.CountTokensResponse );",
        "ChatCompletion": "rpc ChatCompletion ( .gptgrpc.v1.ChatCompletionRequest ) returns "
        "( .gptgrpc.v1.ChatCompletionResponse );",
        "StreamChatCompletion": "rpc StreamChatCompletion ( .gptgrpc.v1.StreamChatCompletionRequest ) returns "
        "( stream .gptgrpc.v1.StreamChatCompletionResponse );",
    }
    for name, rpc in expected.items():
        method = await grpcurl(target, "describe", f"{SERVICE}.{name}")
        assert method.code == 0, (name, method.err)
        assert f"{SERVICE}.{name} is a method" in method.out and rpc in method.out

    message = await grpcurl(target, "describe", "gptgrpc.v1.CountTokensRequest")
    assert message.code == 0, message.err
    assert (
        "message CountTokensRequest {" in message.out
        and "repeated .gptgrpc.v1.ChatMessage messages = 2;" in message.out
    )
    for symbol in ("gptgrpc.v1.Role.ROLE_USER", "gptgrpc.v1.ROLE_USER"):
        value = await grpcurl(target, "describe", symbol)
        assert value.code == 0 and "is an enum value" in value.out and "ROLE_USER = 3;" in value.out, value

    count = await grpcurl(target, f"{SERVICE}/CountTokens", data='{"text": "hello world", "model": "gpt-4"}')
    assert count.code == 0, count.err
    assert json.loads(count.out) == {"token_count": "2", "encoding": "cl100k_base"}

    chat = await grpcurl(target, f"{SERVICE}/ChatCompletion", data='{"user_message": "from grpcurl"}')
    assert chat.code == 0, chat.err
    assert json.loads(chat.out)["content"] == "Echo: from grpcurl"

    stream = await grpcurl(target, f"{SERVICE}/StreamChatCompletion", data='{"user_message": "streamed"}')
    assert stream.code == 0, stream.err
    events = [json.loads(part) for part in stream.out.replace("}\n{", "}\x00{").split("\x00")]
    assert "".join(e["delta"].get("content", "") for e in events if "delta" in e) == "Echo: streamed"
    assert events[-1]["summary"]["finish_reason"] == "FINISH_REASON_STOP"


GHZ_CALLS = {
    "CountTokens": '{"text": "hello world"}',
    "ChatCompletion": '{"user_message": "from ghz"}',
    "StreamChatCompletion": '{"user_message": "from ghz"}',
}


async def test_ghz_loads_the_main_rpcs_through_reflection(gateway_process: ServerProcess, standin: Standin) -> None:
    """ghz could not call the gateway through reflection at any version before."""
    calls = 40
    for method, data in GHZ_CALLS.items():
        before = len(standin.requests)
        report = await run(
            "ghz", "--insecure", "--call", f"{SERVICE}.{method}", "-d", data,
            "-n", str(calls), "-c", "4", "--timeout", "20s", "--format", "json", gateway_process.target,
        )  # fmt: skip
        assert report.code == 0, (method, report.err)
        summary = json.loads(report.out)
        assert summary["count"] == calls, method
        assert summary["statusCodeDistribution"] == {"OK": calls}, (method, summary.get("errorDistribution"))
        assert len(standin.requests) - before == (0 if method == "CountTokens" else calls)


async def probe(target: str, service: str = "") -> Ran:
    args = ["-addr", target, "-connect-timeout", "5s", "-rpc-timeout", "5s"]
    return await run("grpc-health-probe", *args, *(["-service", service] if service else []))


async def test_grpc_health_probe_while_serving_and_while_draining(
    gateway_process: ServerProcess, standin: Standin
) -> None:
    for service in ("", SERVICE):
        serving = await probe(gateway_process.target, service)
        assert (serving.code, (serving.out + serving.err).strip()) == (PROBE_SERVING, "status: SERVING"), serving

    # One stream that takes ~4 s (40 chunks, 0.1 s apart) is in flight when SIGTERM comes.
    standin.set_reply(content=" ".join(f"w{i}" for i in range(40)), chunks=40)
    standin.set_random_faults(rate=1.0, kinds=["slow_stream"], seed=1, delay=0.1)
    async with grpc.aio.insecure_channel(gateway_process.target) as channel:
        stub = pb_grpc.GPTServiceStub(channel)

        async def stream() -> str:
            request = pb.StreamChatCompletionRequest(user_message="drain me")
            return "".join([e.delta.content async for e in stub.StreamChatCompletion(request, timeout=60)])

        call = asyncio.ensure_future(stream())
        await standin.wait_for(lambda s: len(s.requests) == 1, timeout=20)
        gateway_process.proc.send_signal(signal.SIGTERM)
        for service in ("", SERVICE):
            draining = await probe(gateway_process.target, service)
            assert draining.code == PROBE_UNHEALTHY, draining
            assert "NOT_SERVING" in draining.out + draining.err
        assert not call.done()  # the probes saw the drain, not the end of it
        assert await call == " ".join(f"w{i}" for i in range(40))
    assert await asyncio.to_thread(gateway_process.proc.wait, 30) == 0
