"""The context assistant's RPCs: protobuf <-> assistant.py, inside the servicer's call envelope.

GPTServicer's handlers for CreateConversation .. DeleteConversation delegate
here, already authorized and admitted (servicer.py). A turn's answer runs
through the engine exactly like a chat call: the turn's prompt is prepared,
metered against the client's limits and budget, sent with the caller's
deadline, and recorded by the envelope. The summary a SUMMARIZE turn has the
model write is a second engine call, metered and recorded here like any other.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from gptgrpc.v1 import gateway_pb2 as pb

from ..assistant import Turn
from ..chat import ChatRequest, ChatResult
from ..store.base import ANONYMOUS, ANY_OWNER
from . import convert

if TYPE_CHECKING:
    from .servicer import Call, GPTServicer


def owner(call: Call) -> str:
    """Whose conversations a caller makes and reads: its client, or ANONYMOUS (no client token, or the admin)."""
    return call.caller.name or ANONYMOUS


def _any_owner(call: Call) -> str:
    """Whose conversations a caller may list and delete: the admin any, others their own."""
    return ANY_OWNER if call.caller.admin else owner(call)


async def create(svc: GPTServicer, request: pb.CreateConversationRequest, call: Call) -> pb.CreateConversationResponse:
    made = await svc.assistant.create(owner(call), convert.new_conversation(request))
    call.model = made.model
    call.fields["conversation_id"] = made.id
    return pb.CreateConversationResponse(conversation=convert.conversation(made))


async def get(svc: GPTServicer, request: pb.GetConversationRequest, call: Call) -> pb.GetConversationResponse:
    found, messages = await svc.assistant.get(owner(call), request.conversation_id)
    call.fields["conversation_id"] = found.id
    return pb.GetConversationResponse(
        conversation=convert.conversation(found),
        messages=[convert.chat_message(m.message) for m in messages],
        summary=found.summary,
    )


async def list_page(svc: GPTServicer, request: pb.ListConversationsRequest, call: Call) -> pb.ListConversationsResponse:
    page, token = await svc.assistant.list_page(_any_owner(call), request.page_size, request.page_token)
    return pb.ListConversationsResponse(conversations=[convert.conversation(c) for c in page], next_page_token=token)


async def delete(svc: GPTServicer, request: pb.DeleteConversationRequest, call: Call) -> pb.DeleteConversationResponse:
    await svc.assistant.delete(_any_owner(call), request.conversation_id)
    call.fields["conversation_id"] = request.conversation_id
    return pb.DeleteConversationResponse()


async def _begin(svc: GPTServicer, request: pb.ConverseRequest | pb.StreamConverseRequest, call: Call) -> Turn:
    chat, paths = convert.turn_input(request, call.request_id)

    async def summarize(summary_request: ChatRequest) -> ChatResult:
        return await _summarize(svc, call, summary_request)

    turn = await svc.assistant.begin(owner(call), request.conversation_id, chat, paths, summarize)
    call.fields.update(
        conversation_id=turn.conversation_id,
        context_tokens=turn.context_tokens,
        untrimmed_tokens=turn.full_tokens,
        context_limit=turn.conversation.context_limit,
        trimmed_messages=turn.trimmed,
    )
    return turn


async def _summarize(svc: GPTServicer, call: Call, request: ChatRequest) -> ChatResult:
    """The summary call: an engine call of its own, held to the client's limits and recorded like one."""
    prepared = svc.engine.prepare(request)
    client = call.caller.client
    ticket = None
    if client is not None:
        estimate = svc.pricer.estimate(client.name, client.limits, prepared.model, prepared.body)
        ticket = await svc.accounts.admit(client, estimate)
    result: ChatResult | None = None
    try:
        result = await svc.engine.acomplete(prepared, deadline=call.deadline)
        return result
    finally:
        usage = result.usage if result is not None else None
        cost = result.cost_usd if result is not None else None
        if cost is None and usage is not None:
            cost = svc.pricer.fallback_cost(usage)
        svc.accounts.record(call.caller.name, prepared.model.name, usage, cost, result is not None, ticket)
        if usage is not None:
            svc.metrics.observe_usage(prepared.model.name, call.caller.name, usage, cost)
        call.fields["summarized"] = result is not None


async def converse(svc: GPTServicer, request: pb.ConverseRequest, call: Call) -> pb.ConverseResponse:
    turn = await _begin(svc, request, call)
    try:
        prepared = await svc._prepare_chat(turn.request, call)
        result = await svc.engine.acomplete(prepared, deadline=call.deadline)
        call.took(result)
        await turn.commit(result)
        return convert.converse_response(result, turn)
    finally:
        await turn.close()


async def stream_converse(
    svc: GPTServicer, request: pb.StreamConverseRequest, call: Call
) -> AsyncIterator[pb.StreamConverseResponse]:
    turn = await _begin(svc, request, call)
    try:
        events = svc.engine.astream(await svc._prepare_chat(turn.request, call), deadline=call.deadline)
        try:
            async for event in events:
                if isinstance(event, ChatResult):
                    call.took(event)
                    await turn.commit(event)  # before the summary: a caller that saw it finds the turn kept
                elif call.first_chunk_at is None:
                    call.first_chunk_at = time.perf_counter()
                yield convert.converse_event(event, turn)
        finally:
            await events.aclose()  # type: ignore[attr-defined]
    finally:
        await turn.close()
