"""Chat requests and results as the domain sees them (no gRPC, no SDK types), and the one validator.

A `ChatRequest` holds the OpenAI request body the gateway will send (before
model quirks are applied). `validate` is the only place a chat request is
checked, whoever built it (the gRPC servicer through convert.py, or the
`GPT` library API), and it lists every violation at once: what a translation
found it could not express (`problems`: a schema that is not JSON, an
unknown enum number) and every rule of the request itself.

A message's `content` is a string, or a list of parts: `TextPart`,
`ImagePart`, `AudioPart`, `FilePart` (raw bytes; the upstream body builder,
`upstream.endpoints.chat_body`, turns them into OpenAI's content-part
objects). Parts are validated here, before anything is sent: media types,
sizes (media.py), and that only user messages carry media.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import media
from .errors import FieldViolation

if TYPE_CHECKING:
    from .models import ModelRecord

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
IMAGE_DETAILS = ("auto", "low", "high")
REASONING_EFFORTS = ("minimal", "low", "medium", "high")
VERBOSITIES = ("low", "medium", "high")
MAX_TOP_LOGPROBS = 20
# OpenAI's bounds on stored-completion metadata.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
SERVICE_TIER = re.compile(r"[a-z0-9_\-]{1,32}")
# Body keys the gateway owns: extra_body_json may not set them (nor any key a request field sets).
# "n": the gateway reads one choice; more would be billed and lost.
GATEWAY_OWNED_KEYS = frozenset(
    {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n"}
)
# The params `_option_violations` checks.
_OPTION_KEYS = frozenset(
    {"reasoning_effort", "verbosity", "top_logprobs", "parallel_tool_calls", "service_tier", "metadata"}
)
# A caller's key name quoted in a violation is cut to this many characters.
_MAX_QUOTED_KEY_CHARS = 64


@dataclass(frozen=True, slots=True)
class TextPart:
    """Text in a message of parts."""

    text: str


@dataclass(frozen=True, slots=True)
class ImagePart:
    """An image: an https or data URL (passed through), or inline bytes with their MIME type."""

    url: str = ""
    data: bytes = b""
    mime_type: str = ""
    detail: str | None = None  # "auto", "low" or "high"; None: the upstream's default


@dataclass(frozen=True, slots=True)
class AudioPart:
    """An audio clip: its bytes and format ("wav" or "mp3")."""

    data: bytes
    format: str


@dataclass(frozen=True, slots=True)
class FilePart:
    """A file such as a PDF; an empty mime_type is guessed from the filename."""

    data: bytes
    filename: str
    mime_type: str = ""


Part = TextPart | ImagePart | AudioPart | FilePart
MEDIA_PARTS = (ImagePart, AudioPart, FilePart)


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request: the model and the rest of the OpenAI body."""

    model: str
    messages: list[dict[str, Any]]
    # Optional OpenAI parameters, only those set: temperature, max_tokens,
    # top_p, stop, seed, presence_penalty, frequency_penalty,
    # response_format, tools, tool_choice, user, reasoning_effort,
    # parallel_tool_calls, logprobs, top_logprobs, service_tier, metadata,
    # store, verbosity.
    params: dict[str, Any] = field(default_factory=dict)
    # The caller's request id, sent upstream and logged; never part of the body.
    request_id: str | None = None
    # What the translation into this form could not express; `validate` reports them.
    problems: tuple[FieldViolation, ...] = ()
    # The messages are the original module's (system_message, user_message) pair:
    # violations name those fields.
    pair: bool = False
    # extra_body_json: merged into the upstream body last; it may not set a key
    # the gateway owns or `params` sets. Its values are never logged.
    extra: Mapping[str, Any] = field(default_factory=dict)

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
    logprobs: tuple[TokenLogprob, ...] = ()
    service_tier: str = ""
    system_fingerprint: str = ""
    annotations: tuple[UrlCitation, ...] = ()


@dataclass(frozen=True)
class Delta:
    """A piece of a streamed answer."""

    content: str = ""
    refusal: str = ""
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class TopLogprob:
    """A likely alternative at one token position."""

    token: str
    logprob: float
    bytes: bytes = b""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """The log probability of one generated token, with its likely alternatives."""

    token: str
    logprob: float
    bytes: bytes = b""
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class UrlCitation:
    """A web source an answer cites, over answer[start_index:end_index]."""

    url: str
    title: str = ""
    start_index: int = 0
    end_index: int = 0


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_model(model: str) -> str | None:
    """Why `model` is not an acceptable model name, or None (chat, CountTokens and the library alike)."""
    if not model.strip():
        return "must not be empty"
    if len(model) > MAX_MODEL_CHARS or not model.isprintable():
        return f"must be printable and at most {MAX_MODEL_CHARS} characters"
    return None


def validate(request: ChatRequest, model: ModelRecord | None = None) -> list[FieldViolation]:
    """Every problem of the request, with the field it is in; empty when valid.

    `model`: the resolved model, for the rules that depend on it
    (reasoning_effort, verbosity); only a name `check_model` accepted is
    resolved, so it is checked here only when there is no record.
    """
    out = list(request.problems)
    bad_model = check_model(request.model) if model is None else None
    if bad_model:
        out.append(FieldViolation("model", bad_model))
    if request.pair:
        for message in request.messages:
            if message.get("role") == "user" and not message.get("content"):
                out.append(FieldViolation("user_message", "must not be empty (or give messages)"))
    else:
        if not request.messages:
            out.append(FieldViolation("messages", "must not be empty"))
        parts = False
        for i, message in enumerate(request.messages):
            parts = _message_violations(message, f"messages[{i}]", out, counting=False) or parts
        if parts:
            _parts_violations(request.messages, out, counting=False)
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
    if not _OPTION_KEYS.isdisjoint(params):
        _option_violations(params, model, out)
    if request.extra:
        _extra_violations(request.extra, params, out)
    return out


def validate_counted(messages: Sequence[Mapping[str, Any]]) -> list[FieldViolation]:
    """What is wrong with messages whose tokens are to be counted (roles, names, parts; empty content is fine)."""
    out: list[FieldViolation] = []
    for i, message in enumerate(messages):
        _message_violations(message, f"messages[{i}]", out, counting=True)
    _parts_violations(messages, out, counting=True)
    return out


class _MediaTotal:
    """The media of one request, summed across its messages."""

    __slots__ = ("bytes", "parts")

    def __init__(self) -> None:
        self.parts = 0
        self.bytes = 0

    def check(self, out: list[FieldViolation]) -> None:
        if self.parts > media.MAX_MEDIA_PARTS:
            out.append(FieldViolation("messages", f"at most {media.MAX_MEDIA_PARTS} image, audio and file parts"))
        if self.bytes > media.MAX_REQUEST_MEDIA_BYTES:
            limit = media.MAX_REQUEST_MEDIA_BYTES // media.MiB
            out.append(FieldViolation("messages", f"images, audio and files must hold at most {limit} MiB in all"))


def _message_violations(message: Mapping[str, Any], path: str, out: list[FieldViolation], *, counting: bool) -> bool:
    """The message's own rules (its parts are `_parts_violations`'); whether its content is a list of parts."""
    role = message.get("role")
    if role not in ROLES:
        out.append(FieldViolation(f"{path}.role", f"must be one of {', '.join(ROLES)}"))
    if "name" in message and not NAME.fullmatch(str(message["name"])):
        out.append(FieldViolation(f"{path}.name", _NAME_RULE))
    content = message.get("content")
    if counting:
        return type(content) is list
    if role == "tool" and not message.get("tool_call_id"):
        out.append(FieldViolation(f"{path}.tool_call_id", "is required for tool messages"))
    if not content and not message.get("tool_calls"):
        out.append(FieldViolation(f"{path}.content", "must not be empty"))
    return type(content) is list


def _parts_violations(messages: Sequence[Mapping[str, Any]], out: list[FieldViolation], *, counting: bool) -> None:
    """The rules of every part, and of the media of all messages together (a text-only request pays one look)."""
    total: _MediaTotal | None = None
    for i, message in enumerate(messages):
        content = message.get("content")
        if type(content) is not list:
            continue
        total = total or _MediaTotal()
        role = message.get("role")
        for j, part in enumerate(content):
            _part_violations(part, role, f"messages[{i}].parts[{j}]", out, counting=counting, media_total=total)
    if total is not None:
        total.check(out)


def _part_violations(
    part: object, role: object, path: str, out: list[FieldViolation], *, counting: bool, media_total: _MediaTotal
) -> None:
    """The rules of one part; OpenAI-shaped dicts (library callers) pass through as given."""
    if isinstance(part, TextPart):
        if not part.text and not counting:
            out.append(FieldViolation(f"{path}.text", "must not be empty"))
        return
    if not isinstance(part, MEDIA_PARTS):
        return
    media_total.parts += 1
    if role != "user":
        out.append(FieldViolation(path, "only user messages may carry images, audio or files"))
    if isinstance(part, ImagePart):
        media_total.bytes += _image_violations(part, path, out)
    elif isinstance(part, AudioPart):
        media_total.bytes += _bytes_violations(part.data, f"{path}.audio.data", out)
        if part.format not in media.AUDIO_FORMATS:
            out.append(FieldViolation(f"{path}.audio.format", "must be WAV or MP3"))
    else:
        media_total.bytes += _bytes_violations(part.data, f"{path}.file.data", out)
        _file_violations(part, f"{path}.file", out)


def _bytes_violations(data: bytes, path: str, out: list[FieldViolation]) -> int:
    """Empty or oversized inline bytes; returns their size (toward the request's total)."""
    if not data:
        out.append(FieldViolation(path, "must not be empty"))
    elif len(data) > media.MAX_PART_BYTES:
        out.append(FieldViolation(path, f"must be at most {media.MAX_PART_BYTES // media.MiB} MiB"))
    return len(data)


def _image_violations(part: ImagePart, path: str, out: list[FieldViolation]) -> int:
    path = f"{path}.image"
    if part.detail is not None and part.detail not in IMAGE_DETAILS:
        out.append(FieldViolation(f"{path}.detail", "must be AUTO, LOW or HIGH"))
    if bool(part.url) == bool(part.data):
        out.append(FieldViolation(path, "set exactly one of url and data"))
        return len(part.data)
    if part.data:
        size = _bytes_violations(part.data, f"{path}.data", out)
        if part.mime_type not in media.IMAGE_FORMATS:
            allowed = ", ".join(media.IMAGE_FORMATS)
            out.append(FieldViolation(f"{path}.mime_type", f"must be one of {allowed} with data"))
        elif size <= media.MAX_PART_BYTES:
            _image_bytes_violation(part.data, part.mime_type, f"{path}.data", out)
        return size
    url = part.url
    if len(url) > media.MAX_URL_CHARS and not url.startswith("data:"):
        out.append(FieldViolation(f"{path}.url", f"must be at most {media.MAX_URL_CHARS} characters"))
    elif url.startswith("https://"):
        if not media.is_https_url(url):
            out.append(FieldViolation(f"{path}.url", "must be an https URL with a host and no spaces"))
    else:
        try:
            inline = media.parse_data_url(url)
        except media.MediaError as exc:
            out.append(FieldViolation(f"{path}.url", str(exc)))
            return 0
        if inline.mime_type not in media.IMAGE_FORMATS:
            allowed = ", ".join(media.IMAGE_FORMATS)
            out.append(FieldViolation(f"{path}.url", f"a data URL's type must be one of {allowed}"))
        else:
            _image_bytes_violation(inline.data, inline.mime_type, f"{path}.url", out)
        return _bytes_violations(inline.data, f"{path}.url", out)
    return 0


def _image_bytes_violation(data: bytes, mime_type: str, path: str, out: list[FieldViolation]) -> None:
    try:
        media.image_size(data, mime_type)
    except media.MediaError as exc:
        out.append(FieldViolation(path, str(exc)))


def _file_violations(part: FilePart, path: str, out: list[FieldViolation]) -> None:
    name = part.filename
    if not name or len(name) > media.MAX_FILENAME_CHARS or "/" in name or "\\" in name or not name.isprintable():
        limit = media.MAX_FILENAME_CHARS
        out.append(FieldViolation(f"{path}.filename", f"must be 1-{limit} printable characters, no slash or backslash"))
    if part.mime_type:
        if not media.is_mime_type(part.mime_type):
            out.append(FieldViolation(f"{path}.mime_type", "must be a MIME type such as application/pdf"))
    elif name and media.guess_mime_type(name) is None:
        out.append(FieldViolation(f"{path}.mime_type", "is required: the filename's extension does not tell it"))


def _option_violations(params: Mapping[str, Any], model: ModelRecord | None, out: list[FieldViolation]) -> None:
    """reasoning_effort, verbosity, logprobs, parallel_tool_calls, service_tier and metadata."""
    reasoning = model is None or model.reasoning
    _model_option(params, "reasoning_effort", REASONING_EFFORTS, model, reasoning, "is not a reasoning model", out)
    verbosity = model is None or model.verbosity
    _model_option(params, "verbosity", VERBOSITIES, model, verbosity, "does not take it (gpt-5 models do)", out)
    top = params.get("top_logprobs")
    if top is not None:
        if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS:
            out.append(FieldViolation("top_logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}"))
        elif params.get("logprobs") is not True:
            out.append(FieldViolation("top_logprobs", "needs logprobs set to true"))
    if "parallel_tool_calls" in params and not params.get("tools"):
        out.append(FieldViolation("parallel_tool_calls", "needs tools"))
    tier = params.get("service_tier")
    if tier is not None and not (isinstance(tier, str) and SERVICE_TIER.fullmatch(tier)):
        out.append(FieldViolation("service_tier", "must be 1-32 lower-case letters, digits, _ or -"))
    metadata = params.get("metadata")
    if metadata is not None:
        _metadata_violations(metadata, out)


def _model_option(
    params: Mapping[str, Any],
    name: str,
    allowed: Sequence[str],
    model: ModelRecord | None,
    takes: bool,
    why_not: str,
    out: list[FieldViolation],
) -> None:
    """An option only some models take: a known value, for a model that takes it (else a violation, never a drop)."""
    value = params.get(name)
    if value is None:
        return
    if value not in allowed:
        out.append(FieldViolation(name, f"must be {', '.join(v.upper() for v in allowed)}"))
    elif model is not None and not takes:
        out.append(
            FieldViolation(
                name, f"{_quoted(model.name)} {why_not} (see ListModels); to send it anyway, put it in extra_body_json"
            )
        )


def _metadata_violations(metadata: Mapping[str, Any], out: list[FieldViolation]) -> None:
    if len(metadata) > MAX_METADATA_PAIRS:
        out.append(FieldViolation("metadata", f"at most {MAX_METADATA_PAIRS} pairs"))
    for key, value in metadata.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METADATA_KEY_CHARS:
            out.append(FieldViolation("metadata", f"keys must be 1-{MAX_METADATA_KEY_CHARS} characters"))
            break
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_CHARS:
            out.append(FieldViolation("metadata", f"values must be at most {MAX_METADATA_VALUE_CHARS} characters"))
            break


def _extra_violations(extra: Mapping[str, Any], params: Mapping[str, Any], out: list[FieldViolation]) -> None:
    """extra_body_json may add keys, never replace one the gateway owns or a request field sets."""
    for key in extra:
        if key in GATEWAY_OWNED_KEYS:
            out.append(FieldViolation("extra_body_json", f"must not set {_quoted(key)}: the gateway sets it"))
        elif key in params:
            out.append(
                FieldViolation("extra_body_json", f"must not set {_quoted(key)}: a field of the request sets it")
            )


def _quoted(text: str) -> str:
    """A caller's name for a violation message, bounded."""
    if len(text) > _MAX_QUOTED_KEY_CHARS:
        text = text[:_MAX_QUOTED_KEY_CHARS] + "..."
    return repr(text)


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
