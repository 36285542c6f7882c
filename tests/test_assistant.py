"""The context assistant's turns in process (assistant.py over a SQLite store), where timing must be controlled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from gpt_grpc.assistant import ContextAssistant, NewConversation
from gpt_grpc.chat import ChatRequest, ChatResult, Usage
from gpt_grpc.conversations import Conversation, Counted
from gpt_grpc.models import Models
from gpt_grpc.store.base import Appended, Lease
from gpt_grpc.store.sqlite import SqliteStore


class SlowAppend(SqliteStore):
    """A store whose append waits for the test's go-ahead."""

    def __init__(self) -> None:
        super().__init__(None)
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def append_turn(
        self, conversation: Conversation, token: str, expected_version: int, messages: Sequence[Counted]
    ) -> Appended:
        self.entered.set()
        await self.go.wait()
        return await super().append_turn(conversation, token, expected_version, messages)


@pytest.fixture
async def store() -> AsyncIterator[SlowAppend]:
    s = SlowAppend()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def no_summary(request: ChatRequest) -> ChatResult:
    raise AssertionError("no summary expected")


ANSWER = ChatResult("Echo: hello", (), "stop", "gpt-4o-mini", "chatcmpl-1", Usage(5, 3, 8), None, 1)


async def test_a_caller_gone_during_the_commit_leaves_the_turn_whole(store: SlowAppend) -> None:
    """The caller leaves while the turn is being appended: the append finishes, the lease is not given back first."""
    assistant = ContextAssistant(store, Models(), lambda name: name or "gpt-4o-mini")
    made = await assistant.create("", NewConversation(system_message="Be brief."))
    turn = await assistant.begin("", made.id, ChatRequest.from_pair("", "", "hello"), ["user_message"], no_summary)
    commit = asyncio.ensure_future(turn.commit(ANSWER))
    await store.entered.wait()
    commit.cancel()  # the caller went away (the RPC is cancelled)...
    closing = asyncio.ensure_future(turn.close())  # ...and the handler's finally closes the turn
    await asyncio.sleep(0.05)
    assert not closing.done(), "close() must wait for the append under way, not give the lease back under it"
    store.go.set()
    await closing
    with pytest.raises(asyncio.CancelledError):
        await commit
    got = await store.get_conversation(made.id, messages=True)
    assert got is not None
    assert [c.message["content"] for c in got[1]] == ["hello", "Echo: hello"] and got[0].version == 1
    assert await store.lease_conversation(made.id, "", "next", 30) is Lease.TAKEN  # released by the append


async def test_a_turn_closed_without_a_commit_gives_the_lease_back(store: SlowAppend) -> None:
    assistant = ContextAssistant(store, Models(), lambda name: name or "gpt-4o-mini")
    made = await assistant.create("", NewConversation())
    request: Any = ChatRequest.from_pair("", "", "hello")
    turn = await assistant.begin("", made.id, request, ["user_message"], no_summary)
    assert await store.lease_conversation(made.id, "", "other", 30) is Lease.BUSY
    await turn.close()
    await turn.close()  # idempotent
    assert await store.lease_conversation(made.id, "", "other", 30) is Lease.TAKEN
    got = await store.get_conversation(made.id, messages=True)
    assert got is not None and got[1] == [] and got[0].version == 0


async def test_an_empty_answer_appends_nothing_and_frees_the_conversation(store: SlowAppend) -> None:
    assistant = ContextAssistant(store, Models(), lambda name: name or "gpt-4o-mini")
    made = await assistant.create("", NewConversation())
    turn = await assistant.begin("", made.id, ChatRequest.from_pair("", "", "hello"), ["user_message"], no_summary)
    empty = ChatResult("", (), "length", "gpt-4o-mini", "chatcmpl-2", Usage(5, 0, 5), None, 1)
    async with asyncio.timeout(5):
        assert await turn.commit(empty) == 0
        await turn.close()
    assert not store.entered.is_set()  # nothing was appended
    assert await store.lease_conversation(made.id, "", "next", 30) is Lease.TAKEN
