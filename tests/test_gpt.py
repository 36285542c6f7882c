"""The original module's interface: `GPT` used as a library, no gRPC involved."""

from __future__ import annotations

import asyncio

import pytest

from gpt_grpc import conversations as rules
from gpt_grpc.chat import ChatRequest, ChatResult, Delta
from gpt_grpc.errors import GatewayError, Reason
from gpt_grpc.gpt import GPT
from gpt_grpc.settings import Settings
from tests.conftest import TEST_KEY, fast_upstream
from tests.standin import Fault, Standin
from tests.standin.app import count_prompt_tokens


def test_api_key_and_endpoint_validate_as_they_are_set() -> None:
    gpt = GPT()
    with pytest.raises(ValueError, match="sk-"):
        gpt.api_key = "not-a-key"  # OpenAI's endpoint wants an sk- key
    with pytest.raises(ValueError, match="empty"):
        gpt.api_key = ""
    gpt.api_key = TEST_KEY
    assert gpt.api_key == TEST_KEY
    with pytest.raises(ValueError, match="http"):
        gpt.endpoint = "ftp://example.com"
    gpt.endpoint = "http://127.0.0.1:11434/v1/"
    assert gpt.endpoint == "http://127.0.0.1:11434/v1"
    gpt.api_key = "ollama"  # any printable token for a custom endpoint
    assert TEST_KEY not in repr(gpt) and "ollama" not in repr(gpt)


def test_count_tokens_offline() -> None:
    gpt = GPT()
    assert gpt.count_tokens("hello world", model="gpt-4") == 2
    assert gpt.count_tokens("hello world") == 2  # gpt-4o-mini, o200k_base


async def test_chat_completion_sync_interface(standin: Standin) -> None:
    gpt = GPT(settings=Settings())
    gpt.endpoint = standin.base_url
    gpt.api_key = TEST_KEY
    standin.enqueue(Fault(kind="server_error"))  # retried by the module itself
    try:
        text = await asyncio.to_thread(
            gpt.chat_completion, "gpt-4o-mini", "Your system message", "Your user message", 0.7, None
        )
        assert text == "Echo: Your user message"
        assert len(standin.requests) == 2
        assert standin.requests[-1].body["temperature"] == 0.7
        _, total = gpt.usage.snapshot()
        assert total.requests == 1 and total.cost_usd > 0
    finally:
        await asyncio.to_thread(gpt.close)


async def test_chat_completion_raises_gateway_errors(standin: Standin) -> None:
    gpt = GPT()
    gpt.endpoint = standin.base_url
    gpt.api_key = TEST_KEY
    standin.enqueue(Fault(kind="model_not_found"))
    try:
        with pytest.raises(GatewayError) as info:
            await asyncio.to_thread(gpt.chat_completion, "nonexistent-model", "", "hi")
        assert info.value.reason is Reason.UPSTREAM_NOT_FOUND and info.value.http_status == 404
    finally:
        await asyncio.to_thread(gpt.close)


async def test_async_calls(standin: Standin) -> None:
    gpt = GPT()
    gpt.configure(fast_upstream(standin.base_url))
    try:
        request = ChatRequest("gpt-4o-mini", [{"role": "user", "content": "a b c"}])
        result = await gpt.acomplete(request)
        assert result.content == "Echo: a b c" and result.attempts == 1
        events = [e async for e in gpt.astream(request)]
        assert all(isinstance(e, Delta) for e in events[:-1])
        final = events[-1]
        assert isinstance(final, ChatResult) and final.content == result.content
        assert "".join(e.content for e in events[:-1] if isinstance(e, Delta)) == result.content
    finally:
        await gpt.aclose()


async def test_a_call_keeps_the_settings_it_started_with(standin: Standin) -> None:
    gpt = GPT()
    gpt.configure(fast_upstream(standin.base_url))
    standin.enqueue(Fault(kind="slow", delay=0.5))
    try:
        call = asyncio.ensure_future(gpt.acomplete(ChatRequest("gpt-4o-mini", [{"role": "user", "content": "x"}])))
        await standin.wait_for(lambda s: len(s.requests) == 1, timeout=5)
        gpt.api_key = "sk-another-key-abcdefghijklmnopq"  # changes later calls only
        result = await call
        assert result.content == "Echo: x"
        assert standin.requests[0].api_key == TEST_KEY
    finally:
        await gpt.aclose()


async def test_context_assistant_keeps_the_conversation_within_the_window(standin: Standin) -> None:
    gpt = GPT()
    gpt.endpoint = standin.base_url
    gpt.api_key = TEST_KEY
    gpt.context_system_message = "Be brief."
    gpt.context_max_tokens = standin.context_window = 120
    try:
        answers = [await asyncio.to_thread(gpt.context_assistant, f"fact number {i} is {i * 11}") for i in range(8)]
        assert answers[0] == "Echo: fact number 0 is 0"
        first = standin.requests[1].body["messages"]
        assert first == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "fact number 0 is 0"},
            {"role": "assistant", "content": "Echo: fact number 0 is 0"},
            {"role": "user", "content": "fact number 1 is 11"},
        ]
        last = standin.requests[-1].body["messages"]
        # Trimmed by the gateway's rules: under the limit (the stand-in's own count), the system
        # message first, whole turns, the newest prompt last.
        assert count_prompt_tokens(last) + rules.default_reserve(120) <= 120
        assert last[0]["role"] == "system" and last[-1]["content"] == "fact number 7 is 77"
        assert [m["role"] for m in last[1:]] == ["user", "assistant"] * ((len(last) - 2) // 2) + ["user"]
        assert len(last) < 2 + 2 * 7
        # A failed turn is not kept; reset_context forgets everything.
        standin.enqueue(Fault(kind="model_not_found"))
        with pytest.raises(GatewayError):
            await asyncio.to_thread(gpt.context_assistant, "lost")
        await asyncio.to_thread(gpt.context_assistant, "after the failure")
        assert "lost" not in str(standin.requests[-1].body["messages"])
        await asyncio.to_thread(gpt.reset_context)
        await asyncio.to_thread(gpt.context_assistant, "fresh")
        assert standin.requests[-1].body["messages"][1:] == [{"role": "user", "content": "fresh"}]
    finally:
        await asyncio.to_thread(gpt.close)
