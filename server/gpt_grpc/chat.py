"""Chat requests and results as the domain sees them (no gRPC, no SDK types).

A `ChatRequest` holds the OpenAI request body the gateway will send (before
model quirks are applied); `validate` checks it field by field so that both
the gRPC servicer and the Python `GPT` API refuse the same bad input.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import FieldViolation

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP_SEQUENCES = 4
MAX_TOOLS = 128
MAX_NAME_LENGTH = 64
# Model names come from callers: bounded before they are sent, logged, labelled or cached.
MAX_MODEL_CHARS = 256
# Sampling ranges documented by OpenAI.
RANGES: Mapping[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request: the model and the rest of the OpenAI body."""

    model: str
    messages: list[dict[str, Any]]
    # Optional OpenAI parameters, only those set: temperature, max_tokens,
    # top_p, stop, seed, presence_penalty, frequency_penalty,
    # response_format, tools, tool_choice, user.
    params: dict[str, Any] = field(default_factory=dict)
    # The caller's request id, sent upstream and logged; never part of the body.
    request_id: str | None = None

    def body(self) -> dict[str, Any]:
        """The OpenAI request body (before model quirks)."""
        return {"model": self.model, "messages": self.messages, **self.params}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False


@dataclass(frozen=True)
class ChatResult:
    """A whole answer, or the end of a stream (content is the whole text)."""

    content: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str | None
    model: str
    id: str
    usage: Usage
    cost_usd: float | None
    attempts: int
    refusal: str = ""
    request_id: str | None = None


@dataclass(frozen=True)
class Delta:
    """A piece of a streamed answer."""

    content: str = ""
    refusal: str = ""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_model(model: str) -> str | None:
    """Why `model` is not an acceptable model name, or None (chat, CountTokens and the library alike)."""
    if not model.strip():
        return "must not be empty"
    if len(model) > MAX_MODEL_CHARS or not model.isprintable():
        return f"must be printable and at most {MAX_MODEL_CHARS} characters"
    return None


def validate(request: ChatRequest) -> list[FieldViolation]:
    """Every problem of the request, with the field it is in; empty when valid."""
    out: list[FieldViolation] = []
    bad_model = check_model(request.model)
    if bad_model:
        out.append(FieldViolation("model", bad_model))
    if not request.messages:
        out.append(FieldViolation("messages", "must not be empty"))
    for i, message in enumerate(request.messages):
        role = message.get("role")
        if role not in ROLES:
            out.append(FieldViolation(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}"))
        if role == "tool" and not message.get("tool_call_id"):
            out.append(FieldViolation(f"messages[{i}].tool_call_id", "is required for tool messages"))
        content = message.get("content")
        if not content and not message.get("tool_calls"):
            out.append(FieldViolation(f"messages[{i}].content", "must not be empty"))
    params = request.params
    for name, (low, high) in RANGES.items():
        if name in params:
            value = params[name]
            if not _is_number(value) or not low <= value <= high:
                out.append(FieldViolation(name, f"must be between {low:g} and {high:g}"))
    if "max_tokens" in params:
        value = params["max_tokens"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            out.append(FieldViolation("max_tokens", "must be a positive integer"))
    stop = params.get("stop")
    if stop is not None:
        if len(stop) > MAX_STOP_SEQUENCES:
            out.append(FieldViolation("stop", f"at most {MAX_STOP_SEQUENCES} sequences"))
        if any(not s for s in stop):
            out.append(FieldViolation("stop", "sequences must not be empty"))
    tools: Sequence[Mapping[str, Any]] = params.get("tools") or ()
    if len(tools) > MAX_TOOLS:
        out.append(FieldViolation("tools", f"at most {MAX_TOOLS} tools"))
    return out
