"""The context assistant: conversations kept in the store, run one turn at a time.

`ContextAssistant` creates, reads, lists and deletes conversations, and
starts a turn (`begin`): it takes the conversation's lease in the store, reads
the history, checks the new message, and plans the prompt with the pure rules
of conversations.py (trimming; under SUMMARIZE, the summary the model writes
through the caller's `Summarizer`). The caller runs the returned `Turn`'s
request through the engine like any chat call (limits, retries, deadlines,
usage), then `commit`s the answer: the new messages and the answer are
appended in one compare-and-set step, or nothing is. `close` gives the lease
back when no commit happened (the call failed or was cancelled).

Concurrency: a second turn on a conversation whose lease is held (by this or
any replica sharing the store) is refused with CONVERSATION_BUSY (ABORTED),
not queued: queueing would hold a caller for the length of somebody else's
answer with no bound. The lease lasts LEASE_SECONDS and is renewed while the
turn runs, so a replica that dies mid-turn frees the conversation soon.

Ownership: a conversation belongs to the client whose token created it
(store.base.ANONYMOUS without one). Another owner's id reads as
CONVERSATION_NOT_FOUND, exactly like an id that never existed. The admin may
list and delete any conversation (owner ANY_OWNER).

This module knows nothing of gRPC or of any database.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from . import conversations as rules
from . import tokens
from .chat import ChatRequest, ChatResult, check_model, validate
from .conversations import Budget, Conversation, Counted, Policy
from .errors import FieldViolation, GatewayError, Reason, invalid
from .models import ModelRecord, Models
from .store.base import ANY_OWNER, Appended, Lease, Store

log = logging.getLogger("gpt_grpc.assistant")

ID_PREFIX = "conv_"
ID_PATTERN = re.compile(r"conv_[A-Za-z0-9_-]{32}")
_ID_BYTES = 24  # 192 random bits: 32 URL-safe characters
DEFAULT_TTL_SECONDS = 7 * 86400.0
MIN_TTL_SECONDS = 1.0
MAX_TTL_SECONDS = 90 * 86400.0
# Caps (documented in the README; --conversation-max-messages, --conversation-max-message-bytes).
DEFAULT_MAX_MESSAGES = 1000
DEFAULT_MAX_MESSAGE_BYTES = 128 * 1024
MAX_LABELS = 16
LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
MAX_LABEL_VALUE_CHARS = 63
# A turn holds its conversation's lease this long, renewed every third of it while it runs.
LEASE_SECONDS = 30.0
# Listing (AIP-158).
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

# What has the model write a summary (SUMMARIZE): an engine call, metered and recorded by the caller.
Summarizer = Callable[[ChatRequest], Awaitable[ChatResult]]


@dataclass(frozen=True)
class Caps:
    """What one conversation may hold."""

    max_messages: int = DEFAULT_MAX_MESSAGES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class NewConversation:
    """A CreateConversation request, in the domain's terms."""

    model: str = ""
    system_message: str = ""
    max_context_tokens: int | None = None
    policy: Policy | None = Policy.TRIM_OLDEST  # None: an unknown policy number (refused)
    ttl_seconds: float | None = None
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


def not_found(conversation_id: str) -> GatewayError:
    shown = conversation_id if ID_PATTERN.fullmatch(conversation_id) else "with that id"
    return GatewayError(
        Reason.CONVERSATION_NOT_FOUND,
        f"no conversation {shown} (it never existed, was deleted, expired, or belongs to another client)",
    )


def busy(conversation_id: str) -> GatewayError:
    return GatewayError(
        Reason.CONVERSATION_BUSY,
        f"conversation {conversation_id} has a turn in progress: this turn was refused, not queued, and changed "
        "nothing; send it again once the other one has finished",
    )


class ContextAssistant:
    """Conversations over a store; see the module docstring."""

    def __init__(
        self,
        store: Store,
        models: Models,
        default_model: Callable[[str], str],
        *,
        caps: Caps | None = None,
        clock: Callable[[], float] = time.time,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.store = store
        self.models = models
        self.caps = caps or Caps()
        self._default_model = default_model
        self._clock = clock
        self.lease_seconds = lease_seconds

    # -- conversations --------------------------------------------------------------

    async def create(self, owner: str, new: NewConversation) -> Conversation:
        """A new conversation of `owner`; raises INVALID_REQUEST listing every bad field."""
        name = self._default_model(new.model)
        out: list[FieldViolation] = []
        bad_model = check_model(name)
        if bad_model:
            out.append(FieldViolation("model", bad_model))
        if new.policy is None:
            out.append(FieldViolation("trimming_policy", "must be TRIM_OLDEST or SUMMARIZE"))
        ttl = DEFAULT_TTL_SECONDS if new.ttl_seconds is None else new.ttl_seconds
        if not (math.isfinite(ttl) and MIN_TTL_SECONDS <= ttl <= MAX_TTL_SECONDS):
            out.append(
                FieldViolation("ttl", f"must be from {MIN_TTL_SECONDS:g} second to {MAX_TTL_SECONDS / 86400:g} days")
            )
        if new.max_context_tokens is not None and new.max_context_tokens < 1:
            out.append(FieldViolation("max_context_tokens", "must be at least 1"))
        out += _label_violations(new.labels)
        size = rules.message_bytes({"content": new.system_message})
        if size > self.caps.max_message_bytes:
            out.append(FieldViolation("system_message", f"must be at most {self.caps.max_message_bytes} bytes (UTF-8)"))
        if out:
            raise invalid(out)
        model = self.models.resolve(name, priced=False)
        window = model.spec.context_window if model.spec is not None else None
        limit = rules.context_limit(new.max_context_tokens, window)
        if limit is None:
            raise invalid(
                [
                    FieldViolation(
                        "max_context_tokens",
                        f"is required for model {name[:64]!r}, whose context window the gateway does not know",
                    )
                ]
            )
        starting = rules.reply_priming(model) + _tokens_of(rules.system_messages(new.system_message, ""), model)
        if starting + rules.default_reserve(limit) > limit:
            raise invalid(
                [
                    FieldViolation(
                        "system_message",
                        f"has {starting} tokens with the prompt's framing: with an answer's reservation that is more "
                        f"than the context limit of {limit} tokens",
                    )
                ]
            )
        now = self._clock()
        conversation = Conversation(
            id=ID_PREFIX + secrets.token_urlsafe(_ID_BYTES),
            owner=owner,
            model=name,
            system_message=new.system_message,
            max_context_tokens=new.max_context_tokens,
            context_limit=limit,
            policy=new.policy or Policy.TRIM_OLDEST,
            labels=dict(new.labels),
            created_at=now,
            updated_at=now,
            expires_at=now + ttl,
            ttl_seconds=ttl,
            context_tokens=starting,
        )
        await self.store.create_conversation(conversation)
        return conversation

    async def get(self, owner: str, conversation_id: str) -> tuple[Conversation, list[Counted]]:
        """One of `owner`'s conversations with its messages; CONVERSATION_NOT_FOUND otherwise."""
        found = await self._find(conversation_id, messages=True)
        if found is None or found[0].owner != owner:
            raise not_found(conversation_id)
        return found

    async def list_page(self, owner: str, page_size: int, page_token: str) -> tuple[list[Conversation], str]:
        """A page of `owner`'s conversations (ANY_OWNER: all), newest first, and the next page's token."""
        if page_size < 0:
            raise invalid([FieldViolation("page_size", "must not be negative")])
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _read_page_token(page_token, owner) if page_token else None
        found = await self.store.list_conversations(owner, after, size + 1)
        page = found[:size]
        more = len(found) > size
        return page, _page_token(owner, page[-1].list_key) if more else ""

    async def delete(self, owner: str, conversation_id: str) -> None:
        """Delete one of `owner`'s conversations (ANY_OWNER: anyone's)."""
        found = await self._find(conversation_id, messages=False)
        if found is None or (owner != ANY_OWNER and found[0].owner != owner):
            raise not_found(conversation_id)
        if not await self.store.delete_conversation(found[0]):
            raise not_found(conversation_id)

    async def _find(self, conversation_id: str, *, messages: bool) -> tuple[Conversation, list[Counted]] | None:
        if not ID_PATTERN.fullmatch(conversation_id):
            return None  # never stored: not worth a store round trip
        return await self.store.get_conversation(conversation_id, messages=messages)

    # -- turns --------------------------------------------------------------------------

    async def begin(
        self, owner: str, conversation_id: str, chat: ChatRequest, paths: Sequence[str], summarize: Summarizer
    ) -> Turn:
        """Start a turn: lease, read, check, plan (and summarize). Close the Turn whatever happens next.

        `chat` holds the turn's new messages and its parameters (its model is
        ignored: the conversation's); `paths` names each new message's field.
        """
        if not ID_PATTERN.fullmatch(conversation_id):
            raise not_found(conversation_id)
        token = secrets.token_hex(16)
        lease = await self.store.lease_conversation(conversation_id, owner, token, self.lease_seconds)
        if lease is Lease.MISSING:
            raise not_found(conversation_id)
        if lease is Lease.BUSY:
            raise busy(conversation_id)
        turn = Turn(self, conversation_id, token)
        try:
            await turn.prepare(chat, paths, summarize)
        except BaseException:
            await turn.close()
            raise
        return turn

    def _now(self) -> float:
        return self._clock()


class Turn:
    """One turn of a conversation, holding its lease: `request` to send, then `commit` or `close`."""

    def __init__(self, assistant: ContextAssistant, conversation_id: str, token: str) -> None:
        self._assistant = assistant
        self._store = assistant.store
        self.conversation_id = conversation_id
        self._token = token
        self._done = False
        self._renewer = asyncio.get_running_loop().create_task(self._renew())
        self._committing: asyncio.Future[int] | None = None
        # Set by prepare:
        self.conversation: Conversation
        self.model: ModelRecord
        self.request: ChatRequest  # the prompt: the conversation's model, the planned messages, the turn's parameters
        self.context_tokens = 0  # the prompt's tokens, counted offline
        self.trimmed = 0  # messages of the conversation not sent verbatim (left out, or replaced by the summary)
        self.full_tokens = 0  # the prompt before trimming (for the log)
        self.summarization: ChatResult | None = None
        self.message_count = 0  # after the commit
        self._new: list[Counted] = []
        self._kept: list[Counted] = []  # history the summary does not replace (all of it is kept in the store)
        self._summary = ""
        self._summarized = 0
        self._fixed = 0  # priming + system + summary (without the turn's tools)

    async def _renew(self) -> None:
        seconds = self._assistant.lease_seconds
        while True:
            await asyncio.sleep(seconds / 3)
            try:
                if not await self._store.renew_lease(self.conversation_id, self._token, seconds):
                    log.warning("conversation %s: the turn's lease was lost", self.conversation_id)
                    return
            except GatewayError as exc:  # the store is away: the commit will say what happened
                log.warning("conversation %s: could not renew the lease (%s)", self.conversation_id, exc.reason.value)

    async def prepare(self, chat: ChatRequest, paths: Sequence[str], summarize: Summarizer) -> None:
        assistant = self._assistant
        found = await self._store.get_conversation(self.conversation_id, messages=True)
        if found is None:
            raise not_found(self.conversation_id)
        conversation, history = found
        self.conversation = conversation
        model = self.model = assistant.models.resolve(conversation.model)
        chat = dataclasses.replace(chat, model=conversation.model)
        new_messages = chat.messages
        violations = validate(chat) + rules.check_input(
            [c.message for c in history], new_messages, max_bytes=assistant.caps.max_message_bytes, paths=paths
        )
        if violations:
            raise invalid(violations)
        adding = len(new_messages) + 1
        if conversation.message_count + adding > assistant.caps.max_messages:
            raise GatewayError(
                Reason.CONVERSATION_FULL,
                f"conversation {conversation.id} holds {conversation.message_count} messages and this turn would "
                f"add {adding}: a conversation holds at most {assistant.caps.max_messages}; start a new one",
            )
        self._new = [rules.count_message(m, model) for m in new_messages]
        limit = conversation.context_limit
        asked = chat.params.get("max_tokens")
        reserved = asked if isinstance(asked, int) and asked > 0 else rules.default_reserve(limit)
        tools = _tools_tokens(chat.params.get("tools"), model)
        priming = rules.reply_priming(model)
        system_only = priming + _tokens_of(rules.system_messages(conversation.system_message, ""), model)
        self._summary, self._summarized = conversation.summary, conversation.summarized
        self._kept = history[self._summarized :]
        self._fixed = priming + _tokens_of(rules.system_messages(conversation.system_message, self._summary), model)
        plan = rules.plan(self._kept, self._new, Budget(limit, reserved, self._fixed + tools))
        self.full_tokens = plan.full_tokens
        if plan.keep_from and conversation.policy is Policy.SUMMARIZE:
            allowance = rules.summary_allowance(limit)
            framing = rules.count_message({"role": "system", "content": rules.SUMMARY_PREFIX}, model).tokens
            room = rules.plan(self._kept, self._new, Budget(limit, reserved, system_only + tools + allowance + framing))
            covered = self._kept[: max(plan.keep_from, room.keep_from)]
            await self._summarize(covered, limit - allowance, allowance, summarize, chat)
            plan = rules.plan(self._kept, self._new, Budget(limit, reserved, self._fixed + tools))
        self.trimmed = self._summarized + plan.keep_from
        self.context_tokens = plan.prompt_tokens
        sent = [dict(c.message) for c in self._kept[plan.keep_from :]] + list(new_messages)
        messages = rules.system_messages(conversation.system_message, self._summary) + sent
        self.request = ChatRequest(conversation.model, messages, chat.params, request_id=chat.request_id)

    async def _summarize(
        self, covered: Sequence[Counted], room: int, allowance: int, summarize: Summarizer, chat: ChatRequest
    ) -> None:
        """Have the model rewrite the summary with `covered` (the oldest kept messages), which it then replaces."""
        model = self.model

        def count(prompt: Sequence[Mapping[str, Any]]) -> int:
            return tokens.count_messages(prompt, model.name, encoding=model.encoding).tokens

        messages, _ = rules.summary_messages(self._summary, covered, room, count)
        request = ChatRequest(model.name, messages, {"max_tokens": allowance}, request_id=chat.request_id)
        result = await summarize(request)
        self.summarization = result
        self._summary = result.content.strip() or self._summary
        self._summarized += len(covered)
        self._kept = self._kept[len(covered) :]
        self._fixed = rules.reply_priming(model) + _tokens_of(
            rules.system_messages(self.conversation.system_message, self._summary), model
        )

    async def commit(self, result: ChatResult) -> int:
        """Append the turn (new messages and the answer); returns the conversation's message count.

        Shielded: once started it finishes even if the caller goes away (and
        `close` waits for it). An empty answer (no content, refusal or tool
        calls) appends nothing.
        """
        self._committing = asyncio.ensure_future(self._commit(result))
        return await asyncio.shield(self._committing)

    async def _commit(self, result: ChatResult) -> int:
        conversation = self.conversation
        answer = _answer_message(result)
        if answer is None:
            self.message_count = conversation.message_count
            self._stop_renewing()
            self._done = True
            await self._release()
            return self.message_count
        added = [*self._new, rules.count_message(answer, self.model)]
        now = self._assistant._now()
        after = dataclasses.replace(
            conversation,
            version=conversation.version + 1,
            message_count=conversation.message_count + len(added),
            summary=self._summary,
            summarized=self._summarized,
            context_tokens=self._fixed + sum(c.tokens for c in [*self._kept, *added]),
            updated_at=now,
            expires_at=now + conversation.ttl_seconds,
        )
        self._stop_renewing()
        outcome = await self._store.append_turn(after, self._token, conversation.version, added)
        self._done = True
        if outcome is Appended.MISSING:
            raise GatewayError(
                Reason.CONVERSATION_NOT_FOUND,
                f"conversation {conversation.id} was deleted (or expired) while this turn ran: the answer was not kept",
            )
        if outcome is Appended.LOST:
            await self._release()
            raise GatewayError(
                Reason.CONVERSATION_BUSY,
                f"conversation {conversation.id} changed while this turn ran (its lease ran out): the answer was not "
                "appended; send the turn again",
            )
        self.message_count = after.message_count
        return self.message_count

    async def close(self) -> None:
        """Give the lease back unless a commit did (idempotent). A commit under way is waited for: the
        lease is its, to the end."""
        self._stop_renewing()
        if self._committing is not None:
            with contextlib.suppress(Exception):  # its outcome went to whoever awaited commit()
                await asyncio.shield(self._committing)
        if not self._done:
            self._done = True
            await asyncio.shield(self._release())

    async def _release(self) -> None:
        try:
            await self._store.release_conversation(self.conversation_id, self._token)
        except GatewayError as exc:  # the lease runs out by itself
            log.warning("conversation %s: could not release the lease (%s)", self.conversation_id, exc.reason.value)

    def _stop_renewing(self) -> None:
        self._renewer.cancel()


# -- helpers ------------------------------------------------------------------------------


def _tokens_of(messages: Sequence[Mapping[str, Any]], model: ModelRecord) -> int:
    return sum(rules.count_message(m, model).tokens for m in messages)


def _tools_tokens(tools: object, model: ModelRecord) -> int:
    if not isinstance(tools, list) or not tools:
        return 0
    with_tools = tokens.count_messages([], model.name, tools=tools, encoding=model.encoding).tokens
    return with_tools - rules.reply_priming(model)


def _answer_message(result: ChatResult) -> dict[str, Any] | None:
    """The answer as the history keeps it; None for an empty one (nothing to keep)."""
    content = result.content or result.refusal
    if not content and not result.tool_calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if result.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in result.tool_calls
        ]
    return message


def _label_violations(labels: Mapping[str, str]) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if len(labels) > MAX_LABELS:
        out.append(FieldViolation("labels", f"at most {MAX_LABELS} labels"))
    for key, value in sorted(labels.items())[: MAX_LABELS + 1]:  # sorted: the same violations in the same order
        shown = key[:64]
        if not LABEL_KEY.fullmatch(key):
            out.append(
                FieldViolation(f"labels[{shown!r}]", "keys are 1-63 of a-z, 0-9, '_' and '-', starting with a letter")
            )
        elif len(value) > MAX_LABEL_VALUE_CHARS or not value.isprintable():
            out.append(
                FieldViolation(f"labels[{shown!r}]", f"values are at most {MAX_LABEL_VALUE_CHARS} printable characters")
            )
    return out


def _page_token(owner: str, after: str) -> str:
    raw = orjson.dumps({"o": owner, "k": after})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_page_token(token: str, owner: str) -> str:
    """The cursor in a page token this listing gave; INVALID_REQUEST for any other text."""
    with contextlib.suppress(ValueError, TypeError, orjson.JSONDecodeError):
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if isinstance(data, dict) and data.get("o") == owner and isinstance(data.get("k"), str):
            return str(data["k"])
    raise invalid([FieldViolation("page_token", "is not a token that this listing returned")])
