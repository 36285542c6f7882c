"""Chat requests and results as the domain sees them (no gRPC, no SDK types), and the one validator.

A `ChatRequest` holds the OpenAI request body the gateway will send (before
model quirks are applied). `validate` is the only place a chat request is
checked, whoever built it (the gRPC servicer through convert.py, or the
`GPT` library API), and it lists every violation at once: what a translation
found it could not express (`problems`: a schema that is not JSON, an
unknown enum number) and every rule of the request itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import FieldViolation

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP_SEQUENCES = 4
MAX_TOOLS = 128
# Model names come from callers: bounded before they are sent, logged, labelled or cached.
MAX_MODEL_CHARS = 256
# Names of messages, tools and JSON schemas, as OpenAI accepts them.
NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_NAME_RULE = "must be 1-64 letters, digits, _ or -"
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
    # What the translation into this form could not express; `validate` reports them.
    problems: tuple[FieldViolation, ...] = ()
    # The messages are the original module's (system_message, user_message) pair:
    # violations name those fields.
    pair: bool = False

    @classmethod
    def from_pair(
        cls,
        model: str,
        system_message: str,
        user_message: str,
        params: dict[str, Any] | None = None,
        *,
        request_id: str | None = None,
        problems: tuple[FieldViolation, ...] = (),
    ) -> ChatRequest:
        """The original module's pair as messages: the system message when given, the user message always."""
        messages: list[dict[str, Any]] = []
        if system_message:
            messages.append({"role": "system", "content": system_message})
        messages.append({"role": "user", "content": user_message})
        return cls(model, messages, params or {}, request_id=request_id, problems=problems, pair=True)

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
    upstream: str = ""  # the configured upstream that answered ("default": the OPENAI_BASE_URL shorthand)


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
    out = list(request.problems)
    bad_model = check_model(request.model)
    if bad_model:
        out.append(FieldViolation("model", bad_model))
    if request.pair:
        for message in request.messages:
            if message.get("role") == "user" and not message.get("content"):
                out.append(FieldViolation("user_message", "must not be empty (or give messages)"))
    else:
        if not request.messages:
            out.append(FieldViolation("messages", "must not be empty"))
        for i, message in enumerate(request.messages):
            _message_violations(message, f"messages[{i}]", out, counting=False)
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
        stops = [stop] if isinstance(stop, str) else list(stop)
        if len(stops) > MAX_STOP_SEQUENCES:
            out.append(FieldViolation("stop", f"at most {MAX_STOP_SEQUENCES} sequences"))
        if any(not s for s in stops):
            out.append(FieldViolation("stop", "sequences must not be empty"))
    _tool_violations(params, out)
    fmt = params.get("response_format")
    if isinstance(fmt, Mapping) and isinstance(fmt.get("json_schema"), Mapping):
        if not NAME.fullmatch(str(fmt["json_schema"].get("name") or "")):
            out.append(FieldViolation("response_format.schema_name", _NAME_RULE))
    return out


def validate_counted(messages: Sequence[Mapping[str, Any]]) -> list[FieldViolation]:
    """What is wrong with messages whose tokens are to be counted (roles and names; empty content is fine)."""
    out: list[FieldViolation] = []
    for i, message in enumerate(messages):
        _message_violations(message, f"messages[{i}]", out, counting=True)
    return out


def _message_violations(message: Mapping[str, Any], path: str, out: list[FieldViolation], *, counting: bool) -> None:
    role = message.get("role")
    if role not in ROLES:
        out.append(FieldViolation(f"{path}.role", f"must be one of {', '.join(ROLES)}"))
    if "name" in message and not NAME.fullmatch(str(message["name"])):
        out.append(FieldViolation(f"{path}.name", _NAME_RULE))
    if counting:
        return
    if role == "tool" and not message.get("tool_call_id"):
        out.append(FieldViolation(f"{path}.tool_call_id", "is required for tool messages"))
    if not message.get("content") and not message.get("tool_calls"):
        out.append(FieldViolation(f"{path}.content", "must not be empty"))


def _tool_violations(params: Mapping[str, Any], out: list[FieldViolation]) -> None:
    tools: Sequence[Any] = params.get("tools") or ()
    if len(tools) > MAX_TOOLS:
        out.append(FieldViolation("tools", f"at most {MAX_TOOLS} tools"))
    names: set[str] = set()
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping):
            name = str(function.get("name") or "")
            if not NAME.fullmatch(name):
                out.append(FieldViolation(f"tools[{i}].name", _NAME_RULE))
            names.add(name)
    choice = params.get("tool_choice")
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        if choice["function"].get("name") not in names:
            out.append(FieldViolation("tool_choice.function_name", "must name one of the tools"))
