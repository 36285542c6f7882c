"""The context assistant end to end: the gateway on loopback, the stand-in upstream, the generated stubs.

What issue 14 asks of server-held conversations: the upstream receives the
history in order; trimming keeps the prompt under the limit, as the stand-in
counts what it received; the system message survives; tool calls and their
results go together; summaries replace old turns and are billed; history
survives a restart (SQLite file, Redis); a cancelled or failed turn appends
nothing; another client cannot read it; a second turn at once is ABORTED;
expired conversations are gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from gptgrpc.v1 import gateway_pb2 as pb

from gpt_grpc import conversations as rules
from gpt_grpc.server.app import ServerConfig
from tests.conftest import ADMIN, ADMIN_TOKEN, Gateway, fast_upstream, start_gateway, stop_gateway
from tests.helpers import details, fail
from tests.standin import Fault, Standin
from tests.standin.app import count_prompt_tokens

SYSTEM = "You are terse. Answer in one line."
WEATHER = pb.Tool(name="get_weather", description="The weather in a city", parameters_json='{"type": "object"}')


def config(standin: Standin, **overrides: Any) -> ServerConfig:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "admin_token": ADMIN_TOKEN,
        "upstream": fast_upstream(standin.base_url),
        "retry_budget": False,
    }
    values.update(overrides)
    return ServerConfig(**values)


async def create(gw: Gateway, metadata: Any = None, **fields: Any) -> pb.Conversation:
    fields.setdefault("system_message", SYSTEM)
    reply = await gw.stub.CreateConversation(pb.CreateConversationRequest(**fields), metadata=metadata, timeout=10)
    return reply.conversation


async def say(gw: Gateway, conversation_id: str, text: str, metadata: Any = None, **fields: Any) -> pb.ConverseResponse:
    request = pb.ConverseRequest(conversation_id=conversation_id, user_message=text, **fields)
    return await gw.stub.Converse(request, metadata=metadata, timeout=10)


def sentence(i: int) -> str:
    return f"Turn {i}: please remember the number {i * 7} and the colour number {i}."


def roles_and_texts(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m.get("content") or "") for m in messages]


def check_tool_pairs(messages: Sequence[Mapping[str, Any]]) -> None:
    """Every tool call is followed by its results and every result follows its call."""
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and m.get("tool_calls"):
            ids = {c["id"] for c in m["tool_calls"]}
            answered = {x.get("tool_call_id") for x in messages[i + 1 : i + 1 + len(ids)]}
            assert answered == ids, f"tool calls {ids} without their results: {roles_and_texts(messages)}"
        if m["role"] == "tool":
            j = i - 1
            while j >= 0 and messages[j]["role"] == "tool":
                j -= 1
            assert j >= 0 and messages[j]["role"] == "assistant", "a tool result without its call"
            assert m["tool_call_id"] in {c["id"] for c in messages[j].get("tool_calls") or ()}


# -- the history -----------------------------------------------------------------------


async def test_the_upstream_receives_the_history_in_order(gateway: Gateway, standin: Standin) -> None:
    conversation = await create(gateway)
    assert conversation.id.startswith("conv_") and len(conversation.id) == 37
    assert conversation.trimming_policy == pb.TRIM_OLDEST and conversation.context_limit == 128_000
    replies = [await say(gateway, conversation.id, sentence(i)) for i in range(3)]
    answers = [r.content for r in replies]
    assert {r.upstream for r in replies} == {"default"}  # the one-upstream shorthand's name
    assert answers == [f"Echo: {sentence(i)}" for i in range(3)]
    expected = [("system", SYSTEM)]
    for i in range(3):
        expected += [("user", sentence(i)), ("assistant", answers[i])]
    sent = standin.requests[-1].body["messages"]
    assert roles_and_texts(sent) == expected[:-1]  # the last request: everything before its answer
    got = await gateway.stub.GetConversation(pb.GetConversationRequest(conversation_id=conversation.id), timeout=10)
    assert [(m.role, m.content) for m in got.messages] == [
        (pb.ROLE_USER if r == "user" else pb.ROLE_ASSISTANT, t) for r, t in expected[1:]
    ]
    assert got.conversation.message_count == 6
    assert got.conversation.context_tokens == count_prompt_tokens([{"role": r, "content": t} for r, t in expected])


async def test_trimming_keeps_the_prompt_under_the_limit(gateway: Gateway, standin: Standin) -> None:
    limit, max_tokens = 160, 12
    standin.context_window = limit  # the upstream refuses anything bigger, as OpenAI does
    conversation = await create(gateway, max_context_tokens=limit)
    trimmed = []
    for i in range(12):
        reply = await say(gateway, conversation.id, sentence(i), max_tokens=max_tokens)
        received = standin.requests[-1].body["messages"]
        # The stand-in's own count of what it received (and billed) is under the limit...
        assert count_prompt_tokens(received) + max_tokens <= limit
        assert reply.usage.prompt_tokens == count_prompt_tokens(received)
        # ... and so is the gateway's offline count, which it reports.
        assert reply.context_tokens == count_prompt_tokens(received)
        # The system message survives every trim, and the newest message is always sent.
        assert roles_and_texts(received)[0] == ("system", SYSTEM)
        assert roles_and_texts(received)[-1] == ("user", sentence(i))
        # What was left out is the oldest turns, whole.
        kept = received[1:-1]
        assert len(kept) % 2 == 0 and all(m["role"] == "user" for m in kept[::2])
        assert reply.trimmed_messages == 2 * i - len(kept)
        trimmed.append(reply.trimmed_messages)
    assert trimmed[0] == 0 and trimmed[-1] >= 10  # it did trim, more and more
    # The store keeps every message: trimming is per turn.
    got = await gateway.stub.GetConversation(pb.GetConversationRequest(conversation_id=conversation.id), timeout=10)
    assert got.conversation.message_count == 24 and len(got.messages) == 24
    # Sent whole (as ChatCompletion), the same history is more than the upstream takes.
    whole = [{"role": "system", "content": SYSTEM}, *({"role": r, "content": c} for r, c in _pairs(got.messages))]
    assert count_prompt_tokens(whole) > limit


def _pairs(messages: Sequence[pb.ChatMessage]) -> list[tuple[str, str]]:
    return [("user" if m.role == pb.ROLE_USER else "assistant", m.content) for m in messages]


async def test_a_message_that_cannot_fit_alone_is_refused_with_its_numbers(gateway: Gateway, standin: Standin) -> None:
    conversation = await create(gateway, max_context_tokens=100)
    text = "word " * 200
    err = details(await fail(say(gateway, conversation.id, text, max_tokens=10)))
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "CONVERSATION_CONTEXT_EXCEEDED")
    tokens = count_prompt_tokens([{"role": "user", "content": text}]) - 3  # without the reply's priming
    assert f"the new message has {tokens} tokens;" in err.message and "limit of 100 " in err.message
    assert standin.request_count == 0
    got = await gateway.stub.GetConversation(pb.GetConversationRequest(conversation_id=conversation.id), timeout=10)
    assert got.conversation.message_count == 0


# -- tools -------------------------------------------------------------------------------


async def test_tool_calls_and_their_results_stay_or_go_together(gateway: Gateway, standin: Standin) -> None:
    limit = 200
    standin.context_window = limit
    conversation = await create(gateway, max_context_tokens=limit)
    # A long call and a long result: when trimming starts, leaving out the question alone, then the
    # question and the call, would be enough; only whole turns may go.
    arguments = '{"city": "Paris", "days": [' + ", ".join(f'"2026-12-{d:02d}"' for d in range(1, 6)) + "]}"
    standin.set_reply(tool_calls=[{"name": "get_weather", "arguments": arguments}])
    asked = await say(gateway, conversation.id, "weather in Paris?", tools=[WEATHER], max_tokens=10)
    standin.set_reply()
    assert asked.finish_reason == pb.FINISH_REASON_TOOL_CALLS and len(asked.tool_calls) == 1
    call_id = asked.tool_calls[0].id
    # A user message while the call is unanswered is refused, and changes nothing.
    err = details(await fail(say(gateway, conversation.id, "and tomorrow?", tools=[WEATHER])))
    assert err.reason == "INVALID_REQUEST" and "answer each with a ROLE_TOOL message" in err.message
    report = "; ".join(f"hour {h}: {10 + h} degrees, clear sky" for h in range(6))
    result = pb.ChatMessage(role=pb.ROLE_TOOL, tool_call_id=call_id, content=report)
    answered = await gateway.stub.Converse(
        pb.ConverseRequest(conversation_id=conversation.id, messages=[result], max_tokens=3), timeout=10
    )
    assert answered.content == "Echo: weather in"  # max_tokens=3: three words
    received = standin.requests[-1].body["messages"]
    assert [m["role"] for m in received] == ["system", "user", "assistant", "tool"]
    check_tool_pairs(received)
    # Short turns, a few tokens more each time, until the tool turn is left out: whole, never half.
    seen_call = True
    for i in range(12):
        await say(gateway, conversation.id, f"ok {i}", max_tokens=3)
        received = standin.requests[-1].body["messages"]
        check_tool_pairs(received)
        assert received[0]["role"] == "system" and received[1]["role"] == "user", "only whole turns are left out"
        assert count_prompt_tokens(received) + 3 <= limit
        has_call = any(m.get("tool_calls") for m in received)
        has_result = any(m["role"] == "tool" for m in received)
        assert has_call == has_result
        seen_call = seen_call and has_call
    assert not seen_call, "the tool turn was never trimmed: make the turns longer"
    # Results for calls nobody made are refused.
    stray = pb.ChatMessage(role=pb.ROLE_TOOL, tool_call_id="call_nobody_made", content="42")
    err = details(
        await fail(gateway.stub.Converse(pb.ConverseRequest(conversation_id=conversation.id, messages=[stray])))
    )
    assert err.reason == "INVALID_REQUEST" and err.fields == ["messages[0].tool_call_id"]


# -- summaries ---------------------------------------------------------------------------


async def test_summarize_replaces_old_turns_and_is_billed(gateway: Gateway, standin: Standin) -> None:
    limit = 300
    standin.context_window = limit
    conversation = await create(gateway, max_context_tokens=limit, trimming_policy=pb.SUMMARIZE)
    replies = []
    for i in range(12):
        replies.append(await say(gateway, conversation.id, sentence(i), max_tokens=12))
        assert all(count_prompt_tokens(r.body["messages"]) + 12 <= limit for r in standin.requests if r.completed)
    summarized = [r for r in replies if r.HasField("summarization_usage")]
    assert summarized, "no turn was summarized"
    first = summarized[0]
    # The summary call: the instructions, then the oldest turns' transcript; billed.
    summary_calls = [r for r in standin.requests if r.body["messages"][0]["content"] == rules.SUMMARY_INSTRUCTIONS]
    assert len(summary_calls) == len(summarized)
    assert "User: " + sentence(0) in summary_calls[0].body["messages"][1]["content"]
    assert summary_calls[0].body["max_tokens"] == rules.summary_allowance(limit)
    assert first.summarization_usage.prompt_tokens > 0 and first.summarization_usage.completion_tokens > 0
    assert first.HasField("summarization_cost_usd") and first.summarization_cost_usd > 0
    assert first.trimmed_messages > 0
    # The next prompt: the system message, the summary in place of those turns, the rest.
    after = standin.requests[standin.requests.index(summary_calls[0]) + 1].body["messages"]
    assert after[0] == {"role": "system", "content": SYSTEM}
    assert after[1]["role"] == "system" and after[1]["content"].startswith(rules.SUMMARY_PREFIX)
    assert not any(m["role"] == "user" and m["content"] == sentence(0) for m in after)
    # Kept: the summary and every message; counted: every upstream call, the summaries too.
    got = await gateway.stub.GetConversation(pb.GetConversationRequest(conversation_id=conversation.id), timeout=10)
    assert got.summary and got.conversation.summarized_messages > 0 and len(got.messages) == 24
    usage = await gateway.stub.GetUsage(pb.GetUsageRequest(), timeout=10)
    assert usage.total.requests == 12 + len(summarized)
    billed = sum(
        r.cost_usd + (r.summarization_cost_usd if r.HasField("summarization_cost_usd") else 0) for r in replies
    )
    assert usage.total.cost_usd == pytest.approx(billed)


# -- persistence -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_history_survives_a_gateway_restart(
    kind: str, standin: Standin, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store = {"sqlite": f"sqlite://{tmp_path / 'gateway.db'}"}.get(kind) or request.getfixturevalue("redis_url")
    first = await start_gateway(config(standin, store_url=store))
    try:
        conversation = await create(first)
        await say(first, conversation.id, "My name is Ada.")
    finally:
        await stop_gateway(first)
    second = await start_gateway(config(standin, store_url=store))
    try:
        reply = await say(second, conversation.id, "What is my name?")
        assert reply.message_count == 4
        assert roles_and_texts(standin.requests[-1].body["messages"]) == [
            ("system", SYSTEM),
            ("user", "My name is Ada."),
            ("assistant", "Echo: My name is Ada."),
            ("user", "What is my name?"),
        ]
    finally:
        await stop_gateway(second)


async def test_replicas_share_conversations_and_refuse_a_second_turn_at_once(standin: Standin, redis_url: str) -> None:
    a = await start_gateway(config(standin, store_url=redis_url))
    b = await start_gateway(config(standin, store_url=redis_url))
    try:
        conversation = await create(a)
        await say(a, conversation.id, "first, on replica a")
        standin.enqueue(Fault(kind="slow_stream", delay=0.3))
        slow = a.stub.StreamConverse(
            pb.StreamConverseRequest(conversation_id=conversation.id, user_message="one two three four"), timeout=20
        )
        assert (await slow.read()).delta.content  # the turn is under way on replica a
        err = details(await fail(say(b, conversation.id, "at the same time, on replica b")))
        assert (err.code, err.reason) == (grpc.StatusCode.ABORTED, "CONVERSATION_BUSY")
        assert "refused, not queued" in err.message and err.retry_info is not None
        events = []
        while (event := await slow.read()) is not grpc.aio.EOF:
            events.append(event)
        assert events[-1].summary.message_count == 4
        reply = await say(b, conversation.id, "then, on replica b")  # the lease went with the turn
        assert reply.message_count == 6
        sent = roles_and_texts(standin.requests[-1].body["messages"])
        assert [t for r, t in sent if r == "user"] == [
            "first, on replica a",
            "one two three four",
            "then, on replica b",
        ]
    finally:
        await stop_gateway(a)
        await stop_gateway(b)


# -- atomic turns --------------------------------------------------------------------------


async def test_a_cancelled_stream_appends_nothing(gateway: Gateway, standin: Standin) -> None:
    conversation = await create(gateway)
    await say(gateway, conversation.id, "kept")
    standin.enqueue(Fault(kind="slow_stream", delay=0.2))
    call = gateway.stub.StreamConverse(
        pb.StreamConverseRequest(conversation_id=conversation.id, user_message="one two three four five"), timeout=30
    )
    assert (await call.read()).delta.content
    call.cancel()
    await standin.wait_for(lambda s: s.requests[-1].client_disconnected, timeout=5)
    got = await gateway.stub.GetConversation(pb.GetConversationRequest(conversation_id=conversation.id), timeout=10)
    assert [m.content for m in got.messages] == ["kept", "Echo: kept"]
    # The lease went back: the next turn runs (not ABORTED) and follows the kept turn.
    reply = await say(gateway, conversation.id, "next")
    assert reply.message_count == 4
    assert [m["content"] for m in standin.requests[-1].body["messages"]][1:] == ["kept", "Echo: kept", "next"]


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault(kind="drop_mid_stream", after_chunks=2), grpc.StatusCode.UNAVAILABLE),
        (Fault(kind="model_not_found"), grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_a_failed_turn_appends_nothing(
    gateway: Gateway, standin: Standin, fault: Fault, code: grpc.StatusCode
) -> None:
    conversation = await create(gateway)
    standin.enqueue(fault)
    call = gateway.stub.StreamConverse(
        pb.StreamConverseRequest(conversation_id=conversation.id, user_message="one two three four five"), timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == code
    got = await gateway.stub.GetConversation(pb.GetConversationRequest(conversation_id=conversation.id), timeout=10)
    assert got.conversation.message_count == 0 and got.conversation.update_time == conversation.update_time
    assert (await say(gateway, conversation.id, "again")).message_count == 2


async def test_two_turns_at_once_the_second_is_aborted(gateway: Gateway, standin: Standin) -> None:
    conversation = await create(gateway)
    standin.enqueue(Fault(kind="slow", delay=1.0))
    first = asyncio.ensure_future(say(gateway, conversation.id, "first"))
    await standin.wait_for(lambda s: s.request_count == 1, timeout=5)
    err = details(await fail(say(gateway, conversation.id, "second")))
    assert (err.code, err.reason) == (grpc.StatusCode.ABORTED, "CONVERSATION_BUSY")
    assert conversation.id in err.message
    assert (await first).message_count == 2
    assert standin.request_count == 1
    got = await gateway.stub.GetConversation(pb.GetConversationRequest(conversation_id=conversation.id), timeout=10)
    assert [m.content for m in got.messages] == ["first", "Echo: first"]


# -- ownership -------------------------------------------------------------------------------


async def test_another_client_cannot_read_it(gateway: Gateway, standin: Standin) -> None:
    tokens = {}
    for name in ("alice", "bob"):
        made = await gateway.stub.CreateClient(pb.CreateClientRequest(name=name), metadata=ADMIN, timeout=10)
        tokens[name] = (("authorization", f"Bearer {made.token}"),)
    alice, bob = tokens["alice"], tokens["bob"]
    conversation = await create(gateway, alice)
    assert conversation.client == "alice"
    await say(gateway, conversation.id, "my secret is 42", alice)
    unknown = "conv_" + "A" * 32
    for target in (conversation.id, unknown):
        for call in (
            gateway.stub.GetConversation(pb.GetConversationRequest(conversation_id=target), metadata=bob),
            gateway.stub.Converse(pb.ConverseRequest(conversation_id=target, user_message="hi"), metadata=bob),
            gateway.stub.DeleteConversation(pb.DeleteConversationRequest(conversation_id=target), metadata=bob),
        ):
            err = details(await fail(call))
            assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
            # The id the caller sent is in the message, and a random id may hold "42" itself.
            said = err.message.replace(target, "")
            assert "42" not in said and "alice" not in said
    listed = await gateway.stub.ListConversations(pb.ListConversationsRequest(), metadata=bob, timeout=10)
    assert list(listed.conversations) == []
    # The admin lists everyone's and deletes any; its owner then finds it gone.
    mine = await create(gateway, bob)
    everyone = await gateway.stub.ListConversations(pb.ListConversationsRequest(), metadata=ADMIN, timeout=10)
    assert [(c.id, c.client) for c in everyone.conversations] == [(mine.id, "bob"), (conversation.id, "alice")]
    await gateway.stub.DeleteConversation(pb.DeleteConversationRequest(conversation_id=conversation.id), metadata=ADMIN)
    err = details(await fail(say(gateway, conversation.id, "still there?", alice)))
    assert err.reason == "CONVERSATION_NOT_FOUND"
    assert standin.request_count == 1


# -- limits ---------------------------------------------------------------------------------


async def test_caps_on_messages_and_bytes(standin: Standin) -> None:
    gw = await start_gateway(config(standin, conversation_max_messages=4, conversation_max_message_bytes=64))
    try:
        conversation = await create(gw, system_message="short")
        await say(gw, conversation.id, "one")
        await say(gw, conversation.id, "two")
        err = details(await fail(say(gw, conversation.id, "three")))
        assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CONVERSATION_FULL")
        assert "at most 4" in err.message
        other = await create(gw, system_message="short")
        err = details(await fail(say(gw, other.id, "é" * 33)))
        assert (err.code, err.reason, err.fields) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST",
            ["user_message"],
        )
        assert "at most 64 bytes" in err.message
        err = details(await fail(create(gw, system_message="x" * 65)))
        assert err.fields == ["system_message"]
        assert standin.request_count == 2
    finally:
        await stop_gateway(gw)


async def test_conversations_count_toward_the_clients_limits(gateway: Gateway, standin: Standin) -> None:
    made = await gateway.stub.CreateClient(
        pb.CreateClientRequest(name="small", limits=pb.ClientLimits(requests_per_minute=3)), metadata=ADMIN
    )
    token = (("authorization", f"Bearer {made.token}"),)
    conversation = await create(gateway, token)  # 1
    await say(gateway, conversation.id, "one", token)  # 2
    await say(gateway, conversation.id, "two", token)  # 3
    err = details(await fail(say(gateway, conversation.id, "three", token)))
    assert (err.code, err.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CLIENT_RATE_LIMITED")
    usage = await gateway.stub.GetUsage(pb.GetUsageRequest(client="small"), metadata=ADMIN, timeout=10)
    assert usage.total.requests == 2 and usage.total.prompt_tokens > 0


async def test_bad_requests(gateway: Gateway) -> None:
    cases: list[tuple[pb.CreateConversationRequest, list[str]]] = [
        (pb.CreateConversationRequest(model="some-local-model"), ["max_context_tokens"]),
        (pb.CreateConversationRequest(max_context_tokens=0), ["max_context_tokens"]),
        (pb.CreateConversationRequest(trimming_policy=9), ["trimming_policy"]),  # type: ignore[arg-type]
        (pb.CreateConversationRequest(ttl=duration_pb2.Duration(seconds=91 * 86400)), ["ttl"]),
        (pb.CreateConversationRequest(labels={"Bad Key": "x", "ok": "y" * 64}), ["labels['Bad Key']", "labels['ok']"]),
        (pb.CreateConversationRequest(system_message="word " * 200, max_context_tokens=100), ["system_message"]),
    ]
    for request, fields in cases:
        err = details(await fail(gateway.stub.CreateConversation(request, timeout=10)))
        assert (err.code, err.reason, err.fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", fields)
    local = await create(gateway, model="some-local-model", max_context_tokens=4096)
    assert local.context_limit == 4096
    conversation = await create(gateway)
    turns: list[tuple[pb.ConverseRequest, list[str]]] = [
        (pb.ConverseRequest(conversation_id=conversation.id), ["user_message"]),
        (pb.ConverseRequest(conversation_id=conversation.id, user_message="x", temperature=3), ["temperature"]),
        (
            pb.ConverseRequest(
                conversation_id=conversation.id, user_message="x", messages=[pb.ChatMessage(role=pb.ROLE_USER)]
            ),
            ["messages"],
        ),
        (
            pb.ConverseRequest(
                conversation_id=conversation.id, messages=[pb.ChatMessage(role=pb.ROLE_SYSTEM, content="new rules")]
            ),
            ["messages[0].role"],
        ),
        (  # a conversation keeps text: no images, audio or files (stored and capped as text)
            pb.ConverseRequest(
                conversation_id=conversation.id,
                messages=[
                    pb.ChatMessage(
                        role=pb.ROLE_USER,
                        parts=[
                            pb.ContentPart(text="what is this?"),
                            pb.ContentPart(image=pb.ImagePart(url="https://example.com/a.png")),
                        ],
                    )
                ],
            ),
            ["messages[0].parts"],
        ),
    ]
    for turn, fields in turns:
        err = details(await fail(gateway.stub.Converse(turn, timeout=10)))
        assert (err.reason, err.fields) == ("INVALID_REQUEST", fields)
    for bad_id in ("", "conv_short", "x" * 10_000):
        err = details(await fail(say(gateway, bad_id, "hi")))
        assert err.reason == "CONVERSATION_NOT_FOUND" and len(err.message) < 200


# -- listing and expiry -------------------------------------------------------------------------


async def test_list_pages_newest_first(gateway: Gateway) -> None:
    made = [await create(gateway, labels={"n": str(i)}) for i in range(5)]
    seen, token, pages = [], "", 0
    while True:
        page = await gateway.stub.ListConversations(pb.ListConversationsRequest(page_size=2, page_token=token))
        seen += [c.id for c in page.conversations]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [c.id for c in reversed(made)] and pages == 3
    err = details(await fail(gateway.stub.ListConversations(pb.ListConversationsRequest(page_token="garbage"))))
    assert (err.reason, err.fields) == ("INVALID_REQUEST", ["page_token"])
    err = details(await fail(gateway.stub.ListConversations(pb.ListConversationsRequest(page_size=-1))))
    assert err.fields == ["page_size"]


async def test_expired_and_deleted_conversations_are_not_found(gateway: Gateway) -> None:
    brief = await create(gateway, ttl=duration_pb2.Duration(seconds=1))
    kept = await create(gateway)
    await gateway.stub.DeleteConversation(pb.DeleteConversationRequest(conversation_id=kept.id), timeout=10)
    async with asyncio.timeout(10):
        while True:  # the store's own clock decides; poll until the second has passed
            try:
                await gateway.stub.GetConversation(pb.GetConversationRequest(conversation_id=brief.id))
            except grpc.aio.AioRpcError as err:
                assert details(err).reason == "CONVERSATION_NOT_FOUND"
                break
            await asyncio.sleep(0.1)
    for gone in (brief.id, kept.id):
        err = details(await fail(say(gateway, gone, "hello?")))
        assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    assert list((await gateway.stub.ListConversations(pb.ListConversationsRequest())).conversations) == []
    assert await gateway.server.store.purge_conversations() == 1


@pytest.fixture
async def sqlite_gateway(standin: Standin, tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = await start_gateway(config(standin, db_path=str(tmp_path / "g.db")))
    try:
        yield gw
    finally:
        await stop_gateway(gw)


async def test_stream_converse_reports_the_turn(sqlite_gateway: Gateway, standin: Standin) -> None:
    conversation = await create(sqlite_gateway, max_context_tokens=1000)
    events = [
        e
        async for e in sqlite_gateway.stub.StreamConverse(
            pb.StreamConverseRequest(conversation_id=conversation.id, user_message="stream me please"), timeout=10
        )
    ]
    assert "".join(e.delta.content for e in events[:-1]) == "Echo: stream me please"
    summary = events[-1].summary
    assert summary.message_count == 2 and summary.trimmed_messages == 0
    assert (
        summary.context_tokens
        == summary.usage.prompt_tokens
        == count_prompt_tokens(standin.requests[-1].body["messages"])
    )
    assert not summary.HasField("summarization_usage")
