"""The Python client's conversation methods, context_assistant and CLI against the real gateway and the stand-in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2

from gpt_grpc.server.app import ServerConfig
from gpt_grpc_client import AsyncClient, Client, ConverseStream, GatewayError, cli
from tests.conftest import ADMIN_TOKEN, Gateway, fast_upstream, start_gateway, stop_gateway
from tests.standin import Standin

WEATHER = gateway_pb2.Tool(name="get_weather", parameters_json='{"type": "object"}')


@pytest.fixture
async def gw(standin: Standin, tmp_path: Path) -> AsyncIterator[Gateway]:
    config = ServerConfig(
        port=0, admin_token=ADMIN_TOKEN, upstream=fast_upstream(standin.base_url), db_path=str(tmp_path / "g.db")
    )
    gateway = await start_gateway(config)
    try:
        yield gateway
    finally:
        await stop_gateway(gateway)


def user_texts(standin: Standin) -> list[str]:
    return [m["content"] for m in standin.requests[-1].body["messages"] if m["role"] == "user"]


async def test_sync_client_conversations(gw: Gateway, standin: Standin) -> None:
    def run() -> None:
        with Client(gw.target, timeout=10) as client:
            made = client.create_conversation(
                system_message="Be brief.", trimming_policy="summarize", ttl=3600, labels={"app": "test"}
            )
            assert made.trimming_policy == gateway_pb2.SUMMARIZE and made.ttl.seconds == 3600
            first = client.converse(made.id, "one", max_tokens=20)
            assert (first.content, first.message_count, first.trimmed_messages) == ("Echo: one", 2, 0)
            with client.stream_converse(made.id, "two") as stream:
                assert isinstance(stream, ConverseStream)
                assert stream.collect() == "Echo: two"
            assert stream.summary is not None and stream.summary.message_count == 4
            assert stream.summary.context_tokens == stream.summary.usage.prompt_tokens
            got = client.get_conversation(made.id)
            assert [m.content for m in got.messages] == ["one", "Echo: one", "two", "Echo: two"]
            # Tool calls, answered with tool messages given as mappings.
            asked = client.converse(made.id, "call tool now", tools=[WEATHER])
            result = {"role": "tool", "tool_call_id": asked.tool_calls[0].id, "content": "sunny"}
            assert client.converse(made.id, messages=[result]).message_count == 8
            others = [client.create_conversation() for _ in range(3)]
            listed = [c.id for c in client.iter_conversations(page_size=2)]
            assert listed == [c.id for c in reversed([made, *others])]
            client.delete_conversation(others[0].id)
            with pytest.raises(GatewayError) as gone:
                client.get_conversation(others[0].id)
            assert (gone.value.code, gone.value.reason) == (grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
            # Checked before sending.
            with pytest.raises(ValueError, match="not both"):
                client.converse(made.id, "x", messages=[{"role": "user", "content": "y"}])
            with pytest.raises(ValueError, match="trimming policy"):
                client.create_conversation(trimming_policy="forget_everything")
            with pytest.raises(TypeError, match="not a ConverseRequest field"):
                client.converse(made.id, "x", model="gpt-4o")

    before = standin.request_count
    await asyncio.to_thread(run)
    assert standin.request_count == before + 4  # four turns, nothing for what was refused


async def test_context_assistant_keeps_one_conversation_per_client(gw: Gateway, standin: Standin) -> None:
    def run() -> None:
        with Client(gw.target, timeout=10) as client, Client(gw.target, timeout=10) as other:
            assert client.context_assistant("My name is Ada.") == "Echo: My name is Ada."
            assert client.context_assistant("What is my name?") == "Echo: What is my name?"
            assert user_texts(standin) == ["My name is Ada.", "What is my name?"]
            other.context_assistant("I am someone else.")  # another client object, another conversation
            assert user_texts(standin) == ["I am someone else."]
            first = client.context_conversation_id
            assert first is not None and first != other.context_conversation_id
            # Its conversation deleted behind its back: a new one starts.
            client.delete_conversation(first)
            assert client.context_assistant("Hello again.") == "Echo: Hello again."
            assert user_texts(standin) == ["Hello again."] and client.context_conversation_id != first
            client.reset_context()
            assert client.context_conversation_id is None

    await asyncio.to_thread(run)


async def test_async_client_conversations(gw: Gateway, standin: Standin) -> None:
    async with AsyncClient(gw.target, admin_token=ADMIN_TOKEN, timeout=10) as client:
        made = await client.create_conversation(max_context_tokens=500)
        assert (await client.converse(made.id, "one")).message_count == 2
        stream = client.stream_converse(made.id, "two")
        assert await stream.collect() == "Echo: two"
        assert stream.summary is not None and stream.summary.message_count == 4
        got = await client.get_conversation(made.id)
        assert got.conversation.context_limit == 500 and len(got.messages) == 4
        assert [c.id for c in (await client.list_conversations(admin=True)).conversations] == [made.id]
        assert await client.context_assistant("remember me") == "Echo: remember me"
        assert await client.context_assistant("and now?") == "Echo: and now?"
        assert user_texts(standin) == ["remember me", "and now?"]
        await client.delete_conversation(made.id, admin=True)
        with pytest.raises(GatewayError) as gone:
            await client.converse(made.id, "three")
        assert gone.value.reason == "CONVERSATION_NOT_FOUND"


async def test_cli_three_turns(
    gw: Gateway, standin: Standin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--target", gw.target, "--timeout", "10"]

    async def cli_run(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(cli.main, [*base, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = await cli_run("conversations", "create", "--system", "You are terse.", "--label", "team=a")
    assert code == 0 and "context limit 128000 tokens" in err, err
    conversation_id = out.strip()
    assert conversation_id.startswith("conv_")
    for prompt in ("My name is Ada.", "What is my name?", "Spell it backwards."):
        code, out, err = await cli_run("chat", "--conversation", conversation_id, prompt)
        assert (code, out) == (0, f"Echo: {prompt}\n"), err
        assert "older messages left out" in err
    assert user_texts(standin) == ["My name is Ada.", "What is my name?", "Spell it backwards."]
    code, out, _ = await cli_run("conversations", "show", conversation_id)
    lines = out.splitlines()
    assert lines[0].split()[0] == "ID" and lines[1].split()[0] == conversation_id
    assert lines[-6:] == [
        "user: My name is Ada.",
        "assistant: Echo: My name is Ada.",
        "user: What is my name?",
        "assistant: Echo: What is my name?",
        "user: Spell it backwards.",
        "assistant: Echo: Spell it backwards.",
    ]
    code, out, _ = await cli_run("conversations", "list")
    assert [line.split()[0] for line in out.splitlines()] == ["ID", conversation_id]
    code, _, err = await cli_run("chat", "--conversation", conversation_id, "--system", "new rules", "x")
    assert code == 1 and "set when it is created" in err
    code, _, err = await cli_run("conversations", "delete", conversation_id)
    assert code == 0
    code, _, err = await cli_run("chat", "--conversation", conversation_id, "hello?")
    assert code == 1 and "NOT_FOUND CONVERSATION_NOT_FOUND" in err
