"""The context assistant's rules, pure: what one turn of a kept conversation sends.

A conversation keeps every message (up to a cap). Each turn sends the system
message, the summary of older turns (policy SUMMARIZE), as much of the history
as fits, then the new message(s). Whether it fits is counted offline with the
model's own encoding (`tokens.count_messages`, through the call's
`models.ModelRecord`), per message once, when the message is added (`Counted`):

    prompt = reply priming + system + summary + tools + kept history + new
    prompt + reserved answer tokens <= the conversation's context limit

The limit is the smaller of the conversation's max_context_tokens and the
model's context window. The answer's reservation is the turn's max_tokens, or
else `default_reserve(limit)`.

What is left out comes in whole *turns*: a turn starts at a user message and
runs to the next one (the user message, the answer, the answer's tool calls
and their results). So the system message is never left out, and an
assistant tool call never goes without its tool results. The turn holding the
new message is never left out: tool results continue the turn of the call
they answer. When even that turn does not fit, the request is refused
(CONVERSATION_CONTEXT_EXCEEDED) with the numbers.

TRIM_OLDEST leaves the oldest turns out of the prompt (the stored history
keeps them). SUMMARIZE has the model rewrite the summary with them instead
(`summary_messages` builds that request), then plans again with the summary
the model wrote: the summary replaces those turns for good.

Nothing here does I/O; `assistant.py` runs a turn with these rules.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import tokens
from .errors import FieldViolation, GatewayError, Reason
from .limits import DEFAULT_RESERVED_COMPLETION_TOKENS
from .models import ModelRecord

# The summary a SUMMARIZE conversation keeps is at most this many tokens (its max_tokens),
# and at most this share of the context limit.
SUMMARY_MAX_TOKENS = 512
SUMMARY_MAX_SHARE = 4  # the summary gets at most limit / SUMMARY_MAX_SHARE
SUMMARY_PREFIX = "Summary of the earlier conversation:\n"
SUMMARY_INSTRUCTIONS = (
    "You keep the memory of a conversation between a user and an assistant. Rewrite the summary so that it "
    "covers the earlier summary (if any) and the messages below: the facts, names, numbers, decisions, open "
    "questions and the user's preferences, in the third person, as briefly as you can. Answer with the summary "
    "alone."
)
# The answer reserves the turn's max_tokens, else this many tokens or a share of the limit, whichever is smaller.
RESERVE_MAX_SHARE = 4


class Policy(enum.StrEnum):
    """How a conversation that outgrows its context is shortened."""

    TRIM_OLDEST = "trim_oldest"
    SUMMARIZE = "summarize"


@dataclass(frozen=True, slots=True)
class Counted:
    """A message in the OpenAI form and its prompt tokens (per-message overhead included)."""

    message: Mapping[str, Any]
    tokens: int


@dataclass(frozen=True)
class Conversation:
    """A conversation as kept, without its messages."""

    id: str
    owner: str  # the client's name; store.base.ANONYMOUS ("") without a client token
    model: str
    system_message: str
    max_context_tokens: int | None
    context_limit: int  # the smaller of max_context_tokens and the model's context window
    policy: Policy
    labels: Mapping[str, str]
    created_at: float  # unix seconds
    updated_at: float
    expires_at: float
    ttl_seconds: float
    version: int = 0  # one more with every appended turn
    message_count: int = 0
    summary: str = ""
    summarized: int = 0  # the first `summarized` messages are replaced by the summary
    context_tokens: int = 0  # the next turn's starting prompt before trimming (priming, system, summary, history)

    @property
    def list_key(self) -> str:
        """Sorts conversations by creation (then id): the listing's order and its page cursor."""
        return f"{round(self.created_at * 1_000_000):020d}:{self.id}"


# -- counting -----------------------------------------------------------------------


def reply_priming(model: ModelRecord) -> int:
    """Tokens every prompt has beside its messages (the reply's priming)."""
    return tokens.count_messages([], model.name, encoding=model.encoding).tokens


def count_message(message: Mapping[str, Any], model: ModelRecord) -> Counted:
    """`message` with its tokens in a prompt of `model` (what count_messages adds for it)."""
    whole = tokens.count_messages([message], model.name, encoding=model.encoding).tokens
    return Counted(message, whole - reply_priming(model))


def system_messages(system_message: str, summary: str) -> list[dict[str, Any]]:
    """What every turn starts with: the system message and the summary, when there are."""
    out: list[dict[str, Any]] = []
    if system_message:
        out.append({"role": "system", "content": system_message})
    if summary:
        out.append({"role": "system", "content": SUMMARY_PREFIX + summary})
    return out


def default_reserve(limit: int) -> int:
    """Completion tokens a turn without max_tokens reserves for its answer."""
    return max(1, min(DEFAULT_RESERVED_COMPLETION_TOKENS, limit // RESERVE_MAX_SHARE))


def summary_allowance(limit: int) -> int:
    """The most tokens a summary may have (its max_tokens)."""
    return max(1, min(SUMMARY_MAX_TOKENS, limit // SUMMARY_MAX_SHARE))


def context_limit(max_context_tokens: int | None, window: int | None) -> int | None:
    """The smaller of the caller's cap and the model's window; None when neither is known."""
    known = [v for v in (max_context_tokens, window) if v is not None]
    return min(known) if known else None


# -- the new input ------------------------------------------------------------------


def message_bytes(message: Mapping[str, Any]) -> int:
    """The size a message counts against the per-message cap: its texts in UTF-8."""
    size = 0
    content = message.get("content")
    if isinstance(content, str):
        size += len(content.encode("utf-8", "surrogatepass"))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        size += len(str(function.get("name") or "").encode("utf-8", "surrogatepass"))
        size += len(str(function.get("arguments") or "").encode("utf-8", "surrogatepass"))
    return size


def pending_tool_calls(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """Ids of the tool calls of the last answer that no tool message answered yet."""
    answered: set[str] = set()
    for message in reversed(history):
        role = message.get("role")
        if role == "tool":
            answered.add(str(message.get("tool_call_id") or ""))
        elif role == "assistant":
            calls = [str(c.get("id") or "") for c in message.get("tool_calls") or ()]
            return [c for c in calls if c not in answered]
        else:
            return []
    return []


def check_input(
    history: Sequence[Mapping[str, Any]],
    new: Sequence[Mapping[str, Any]],
    *,
    max_bytes: int,
    paths: Sequence[str],
) -> list[FieldViolation]:
    """What is wrong with a turn's new messages, given the history they follow.

    A turn brings either one user message, or the tool results the last answer
    asked for (all of them before any user message), optionally followed by one
    user message. `paths` names each new message's field, for the violations.
    """
    out: list[FieldViolation] = []
    pending = pending_tool_calls(history)
    seen_user = False
    for message, path in zip(new, paths, strict=True):
        size = message_bytes(message)
        if size > max_bytes:
            out.append(FieldViolation(path, f"must be at most {max_bytes} bytes (UTF-8), got {size}"))
        role = message.get("role")
        if role == "tool":
            call_id = str(message.get("tool_call_id") or "")
            if seen_user:
                out.append(FieldViolation(path, "tool results come before the user message"))
            elif call_id in pending:
                pending.remove(call_id)
            else:
                out.append(FieldViolation(f"{path}.tool_call_id", "answers no pending tool call of the last answer"))
        elif role == "user":
            if seen_user:
                out.append(FieldViolation(path, "a turn has at most one user message"))
            seen_user = True
        else:
            out.append(FieldViolation(f"{path}.role", "must be ROLE_USER or ROLE_TOOL (the system message is fixed)"))
    if seen_user and pending:
        out.append(
            FieldViolation(
                paths[0] if paths else "messages",
                f"the last answer called tools ({', '.join(pending[:8])}): answer each with a ROLE_TOOL message first",
            )
        )
    return out


# -- the plan -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """What a turn's prompt must fit in."""

    limit: int  # the conversation's context limit
    reserved: int  # completion tokens reserved for the answer
    fixed: int  # tokens always sent: reply priming, system message, summary, tools


@dataclass(frozen=True, slots=True)
class Plan:
    """Which history messages a turn sends: history[keep_from:] then the new ones."""

    keep_from: int  # history messages left out (the oldest ones)
    prompt_tokens: int  # the prompt sent: fixed + kept history + new
    full_tokens: int  # the prompt before leaving anything out


def turn_starts(messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """Where each turn starts: at 0, and at every user message."""
    return [i for i, m in enumerate(messages) if i == 0 or m.get("role") == "user"]


def plan(history: Sequence[Counted], new: Sequence[Counted], budget: Budget) -> Plan:
    """The oldest turns to leave out so that the prompt fits; raises CONVERSATION_CONTEXT_EXCEEDED.

    The turn holding the first new message is never left out (tool results
    continue the turn of the calls they answer).
    """
    combined = [*history, *new]
    suffix = [0] * (len(combined) + 1)  # suffix[i]: tokens of combined[i:]
    for i in range(len(combined) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + combined[i].tokens
    full = budget.fixed + suffix[0]
    if full + budget.reserved <= budget.limit:
        return Plan(0, full, full)
    starts = turn_starts([c.message for c in combined])
    last = max(s for s in starts if s <= len(history))
    for start in starts:
        if start > last:
            break
        prompt = budget.fixed + suffix[start]
        if prompt + budget.reserved <= budget.limit:
            return Plan(start, prompt, full)
    raise _too_long(history, new, budget, last, budget.fixed + suffix[last])


def _too_long(history: Sequence[Counted], new: Sequence[Counted], budget: Budget, last: int, need: int) -> GatewayError:
    new_tokens = sum(c.tokens for c in new)
    carried = need - budget.fixed - new_tokens
    parts = [f"the system message, summary and tools ({budget.fixed})"]
    if carried:
        parts.append(f"the tool calls it answers ({carried})")
    parts.append(f"the answer's reservation ({budget.reserved})")
    return GatewayError(
        Reason.CONVERSATION_CONTEXT_EXCEEDED,
        f"the new message has {new_tokens} tokens; with {', '.join(parts[:-1])} and {parts[-1]} the turn needs "
        f"{need + budget.reserved} tokens, more than the conversation's limit of {budget.limit} even with every "
        "older turn left out: send a shorter message, lower max_tokens, or use a conversation with a larger "
        "max_context_tokens",
    )


# -- summaries ----------------------------------------------------------------------


def _line(message: Mapping[str, Any]) -> str:
    role = str(message.get("role") or "")
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    if role == "tool":
        return f"Tool result ({message.get('tool_call_id') or ''}): {text}"
    lines = [f"{role.capitalize()}: {text}"] if text else []
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        lines.append(f"{role.capitalize()} called {function.get('name') or ''}({function.get('arguments') or ''})")
    return "\n".join(lines)


def summary_messages(
    previous: str,
    messages: Sequence[Counted],
    room: int,
    count: Callable[[Sequence[Mapping[str, Any]]], int],
) -> tuple[list[dict[str, Any]], int]:
    """The request that has the model rewrite the summary, and how many of `messages` it covers.

    Its prompt (`count` counts a prompt's tokens) fits in `room` (the limit less
    the summary's allowance): the transcript holds the newest messages that fit,
    and an older message that does not fit is left out of the summary too. An
    earlier summary too long to fit at all (an upstream that wrote more than its
    max_tokens) is left out as well.
    """
    lines = [line for line in (_line(c.message) for c in messages) if line]
    header = f"Earlier summary:\n{previous}\n\n" if previous else ""

    def request(newest: int) -> list[dict[str, Any]]:
        transcript = header + "Messages:\n" + "\n".join(lines[len(lines) - newest :])
        return [{"role": "system", "content": SUMMARY_INSTRUCTIONS}, {"role": "user", "content": transcript}]

    if header and count(request(0)) > room:
        header = ""

    low, high = 0, len(lines)  # the most lines that fit: low fits (or nothing does), high + 1 does not
    while low < high:
        middle = (low + high + 1) // 2
        if count(request(middle)) <= room:
            low = middle
        else:
            high = middle - 1
    return request(low), low
