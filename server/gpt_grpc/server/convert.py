"""Protobuf <-> domain translation, and nothing else.

A chat request is translated whatever it holds: what cannot be expressed in
the domain's terms (an unknown enum number, a JSON field that is not a JSON
object, both request forms at once) travels as `ChatRequest.problems`, and
`chat.validate` (the one validator) reports those together with every rule
of the request itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import orjson
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from gptgrpc.v1 import gateway_pb2 as pb

from ..accounts import ClientRecord
from ..assistant import NewConversation, Turn
from ..chat import (
    AudioPart,
    ChatRequest,
    ChatResult,
    Delta,
    FilePart,
    ImagePart,
    Part,
    TextPart,
    TokenLogprob,
    ToolCall,
    UrlCitation,
    Usage,
)
from ..conversations import Conversation, Policy
from ..errors import FieldViolation, invalid
from ..limits import Limits
from ..settings import Settings, SettingsUpdate, mask_key
from ..tokens import TokenCount
from ..upstream.routing import UpstreamStatus
from ..upstreams import BreakerPolicy, UpstreamSet, UpstreamSpec, parse_configured
from ..usage import ModelTotals

ROLE_NAMES: Mapping[int, str] = {
    pb.ROLE_SYSTEM: "system",
    pb.ROLE_DEVELOPER: "developer",
    pb.ROLE_USER: "user",
    pb.ROLE_ASSISTANT: "assistant",
    pb.ROLE_TOOL: "tool",
}
FINISH_REASONS: Mapping[str, int] = {
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
    "content_filter": pb.FINISH_REASON_CONTENT_FILTER,
    "function_call": pb.FINISH_REASON_FUNCTION_CALL,
}
TOOL_CHOICE_MODES: Mapping[int, str] = {
    pb.TOOL_CHOICE_MODE_AUTO: "auto",
    pb.TOOL_CHOICE_MODE_NONE: "none",
    pb.TOOL_CHOICE_MODE_REQUIRED: "required",
}
IMAGE_DETAILS: Mapping[int, str | None] = {
    pb.IMAGE_DETAIL_UNSPECIFIED: None,
    pb.IMAGE_DETAIL_AUTO: "auto",
    pb.IMAGE_DETAIL_LOW: "low",
    pb.IMAGE_DETAIL_HIGH: "high",
}
AUDIO_FORMATS: Mapping[int, str] = {pb.AUDIO_FORMAT_WAV: "wav", pb.AUDIO_FORMAT_MP3: "mp3"}
REASONING_EFFORTS: Mapping[int, str] = {
    pb.REASONING_EFFORT_MINIMAL: "minimal",
    pb.REASONING_EFFORT_LOW: "low",
    pb.REASONING_EFFORT_MEDIUM: "medium",
    pb.REASONING_EFFORT_HIGH: "high",
}
VERBOSITIES: Mapping[int, str] = {pb.VERBOSITY_LOW: "low", pb.VERBOSITY_MEDIUM: "medium", pb.VERBOSITY_HIGH: "high"}
# Bound on the text of one JSON schema / tool parameters field.
MAX_SCHEMA_BYTES = 1_000_000
# Bound on extra_body_json: room for a guided_json schema, not for a second request.
MAX_EXTRA_BODY_BYTES = 256 * 1024
# orjson reads JSON nested up to 1024 levels but writes at most 255, and the
# schema sits a few levels down in the upstream body: a deeper schema would be
# accepted here and then fail to be sent (INTERNAL). Refuse it as invalid.
MAX_SCHEMA_DEPTH = 128
SCALAR_PARAMS = ("temperature", "max_tokens", "top_p", "seed", "presence_penalty", "frequency_penalty")
# Optional fields of the chat surface passed on as set (explicit presence).
OPTION_PARAMS = ("parallel_tool_calls", "logprobs", "top_logprobs", "store")


class _ChatFields(Protocol):
    """What ChatCompletionRequest and StreamChatCompletionRequest share."""

    model: str
    system_message: str
    user_message: str
    user: str
    service_tier: str
    extra_body_json: str

    # Read-only: an enum field's type is its own int subtype (ValueType).
    @property
    def reasoning_effort(self) -> int: ...
    @property
    def verbosity(self) -> int: ...
    @property
    def messages(self) -> Sequence[pb.ChatMessage]: ...
    @property
    def stop(self) -> Sequence[str]: ...
    @property
    def tools(self) -> Sequence[pb.Tool]: ...
    @property
    def response_format(self) -> pb.ResponseFormat: ...
    @property
    def tool_choice(self) -> pb.ToolChoice: ...
    @property
    def metadata(self) -> Mapping[str, str]: ...
    def HasField(self, field_name: Any) -> bool: ...


def _json_object(
    text: str, field: str, out: list[FieldViolation], limit: int = MAX_SCHEMA_BYTES
) -> dict[str, Any] | None:
    if len(text) > limit:
        out.append(FieldViolation(field, f"must be at most {limit} bytes"))
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:  # also raised past orjson's nesting limit
        out.append(FieldViolation(field, "must be a JSON object"))
        return None
    if not isinstance(value, dict):
        out.append(FieldViolation(field, "must be a JSON object"))
        return None
    if _deeper_than(value, MAX_SCHEMA_DEPTH):
        out.append(FieldViolation(field, f"must be nested at most {MAX_SCHEMA_DEPTH} levels deep"))
        return None
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests objects/arrays more than `limit` levels (no recursion)."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [c for v in level if isinstance(v, (dict, list)) for c in (v.values() if isinstance(v, dict) else v)]
        if not level:
            return False
    return any(isinstance(v, (dict, list)) for v in level)


def _part(p: pb.ContentPart, path: str, out: list[FieldViolation]) -> Part | None:
    which = p.WhichOneof("part")
    if which == "text":
        return TextPart(p.text)
    if which == "image":
        image = p.image
        if image.detail not in IMAGE_DETAILS:
            out.append(FieldViolation(f"{path}.image.detail", "must be AUTO, LOW or HIGH"))
        return ImagePart(image.url, image.data, image.mime_type, IMAGE_DETAILS.get(image.detail))
    if which == "audio":
        # An unset or unknown format has no name: the validator refuses the empty one.
        return AudioPart(p.audio.data, AUDIO_FORMATS.get(p.audio.format, ""))
    if which == "file":
        return FilePart(p.file.data, p.file.filename, p.file.mime_type)
    out.append(FieldViolation(path, "must hold one of text, image, audio or file"))
    return None


def _message(m: pb.ChatMessage, index: int, out: list[FieldViolation]) -> dict[str, Any]:
    # An unknown role number has no name: the validator refuses the empty one.
    content: str | list[Part] = m.content
    if m.parts:
        path = f"messages[{index}]"
        if m.content:
            out.append(FieldViolation(f"{path}.parts", "give either content or parts, not both"))
        parts = [_part(p, f"{path}.parts[{j}]", out) for j, p in enumerate(m.parts)]
        content = [p for p in parts if p is not None]
    message: dict[str, Any] = {"role": ROLE_NAMES.get(m.role, ""), "content": content}
    if m.HasField("name"):
        message["name"] = m.name
    if m.HasField("tool_call_id"):
        message["tool_call_id"] = m.tool_call_id
    if m.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
            for c in m.tool_calls
        ]
        if not content:
            message["content"] = None
    return message


def _enum_param(
    value: int, names: Mapping[int, str], name: str, params: dict[str, Any], out: list[FieldViolation]
) -> None:
    """An enum request field: unset (0) sends nothing, a known value its name, an unknown number a violation."""
    if value == 0:
        return
    known = names.get(value)
    if known is None:
        out.append(FieldViolation(name, f"must be one of {', '.join(v.upper() for v in names.values())}"))
    else:
        params[name] = known


def chat_request(req: _ChatFields, request_id: str | None = None) -> ChatRequest:
    """The domain request; what could not be translated is in its `problems` (chat.validate reports them)."""
    out: list[FieldViolation] = []
    params: dict[str, Any] = {}
    for name in SCALAR_PARAMS:
        if req.HasField(name):
            params[name] = getattr(req, name)
    if req.stop:
        params["stop"] = list(req.stop)
    if req.user:
        params["user"] = req.user
    if req.tools:
        tools = []
        for i, tool in enumerate(req.tools):
            function: dict[str, Any] = {"name": tool.name}
            if tool.description:
                function["description"] = tool.description
            if tool.parameters_json:
                schema = _json_object(tool.parameters_json, f"tools[{i}].parameters_json", out)
                if schema is not None:
                    function["parameters"] = schema
            if tool.HasField("strict"):
                function["strict"] = tool.strict
            tools.append({"type": "function", "function": function})
        params["tools"] = tools
    if req.HasField("tool_choice"):
        which = req.tool_choice.WhichOneof("choice")
        if which == "mode":
            mode = TOOL_CHOICE_MODES.get(req.tool_choice.mode)
            if mode is None:
                out.append(FieldViolation("tool_choice.mode", "must be AUTO, NONE or REQUIRED"))
            else:
                params["tool_choice"] = mode
        elif which == "function_name":
            params["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.function_name}}
    if req.HasField("response_format"):
        fmt = _response_format(req.response_format, out)
        if fmt is not None:
            params["response_format"] = fmt
    extra = _options(req, params, out)
    if req.messages:
        if req.system_message or req.user_message:
            out.append(FieldViolation("messages", "give either system_message/user_message or messages, not both"))
        messages = [_message(m, i, out) for i, m in enumerate(req.messages)]
        return ChatRequest(req.model, messages, params, request_id=request_id, problems=tuple(out), extra=extra)
    request = ChatRequest.from_pair(
        req.model, req.system_message, req.user_message, params, request_id=request_id, problems=tuple(out)
    )
    return request if not extra else dataclasses.replace(request, extra=extra)


def _options(req: _ChatFields, params: dict[str, Any], out: list[FieldViolation]) -> dict[str, Any]:
    """The chat surface's options (fields 16-24) into `params`; the parsed extra_body_json."""
    _enum_param(req.reasoning_effort, REASONING_EFFORTS, "reasoning_effort", params, out)
    _enum_param(req.verbosity, VERBOSITIES, "verbosity", params, out)
    for name in OPTION_PARAMS:
        if req.HasField(name):
            params[name] = getattr(req, name)
    if req.service_tier:
        params["service_tier"] = req.service_tier
    if req.metadata:
        params["metadata"] = dict(req.metadata)
    if not req.extra_body_json:
        return {}
    return _json_object(req.extra_body_json, "extra_body_json", out, MAX_EXTRA_BODY_BYTES) or {}


def _response_format(fmt: pb.ResponseFormat, out: list[FieldViolation]) -> dict[str, Any] | None:
    if fmt.type in (pb.RESPONSE_FORMAT_TYPE_UNSPECIFIED, pb.RESPONSE_FORMAT_TYPE_TEXT):
        return {"type": "text"} if fmt.type == pb.RESPONSE_FORMAT_TYPE_TEXT else None
    if fmt.type == pb.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        return {"type": "json_object"}
    if fmt.type == pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        schema = _json_object(fmt.schema_json, "response_format.schema_json", out)
        spec: dict[str, Any] = {"name": fmt.schema_name, "schema": schema}
        if fmt.HasField("strict"):
            spec["strict"] = fmt.strict
        return {"type": "json_schema", "json_schema": spec}
    out.append(FieldViolation("response_format.type", "must be TEXT, JSON_OBJECT or JSON_SCHEMA"))
    return None


def count_messages(messages: Sequence[pb.ChatMessage]) -> tuple[list[dict[str, Any]], list[FieldViolation]]:
    """CountTokens' messages, and what could not be translated (validate_counted adds the rules)."""
    out: list[FieldViolation] = []
    return [_message(m, i, out) for i, m in enumerate(messages)], out


def _usage(u: Usage) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        cached_prompt_tokens=u.cached_prompt_tokens,
        reasoning_tokens=u.reasoning_tokens,
        estimated=u.estimated,
    )


def _tool_calls(calls: Sequence[ToolCall]) -> list[pb.ToolCall]:
    return [pb.ToolCall(id=c.id, name=c.name, arguments_json=c.arguments) for c in calls]


def _logprobs(logprobs: Sequence[TokenLogprob]) -> list[pb.TokenLogprob]:
    return [
        pb.TokenLogprob(
            token=t.token,
            logprob=t.logprob,
            bytes=t.bytes,
            top_logprobs=[pb.TopLogprob(token=a.token, logprob=a.logprob, bytes=a.bytes) for a in t.top],
        )
        for t in logprobs
    ]


def _citations(citations: Sequence[UrlCitation]) -> list[pb.UrlCitation]:
    return [
        pb.UrlCitation(url=c.url, title=c.title, start_index=c.start_index, end_index=c.end_index) for c in citations
    ]


def _answer_fields(r: ChatResult) -> dict[str, Any]:
    """What a chat response and a stream's summary both say of the answer."""
    return {
        "tool_calls": _tool_calls(r.tool_calls),
        "finish_reason": FINISH_REASONS.get(r.finish_reason or "", pb.FINISH_REASON_UNSPECIFIED),
        "model": r.model,
        "id": r.id,
        "usage": _usage(r.usage),
        "cost_usd": r.cost_usd,
        "attempts": r.attempts,
        "upstream": r.upstream,
        "service_tier": r.service_tier,
        "system_fingerprint": r.system_fingerprint,
        "annotations": _citations(r.annotations) if r.annotations else (),
    }


def chat_response(r: ChatResult) -> pb.ChatCompletionResponse:
    return pb.ChatCompletionResponse(
        content=r.content,
        refusal=r.refusal,
        logprobs=_logprobs(r.logprobs) if r.logprobs else (),
        **_answer_fields(r),
    )


def stream_event(event: Delta | ChatResult) -> pb.StreamChatCompletionResponse:
    if isinstance(event, Delta):
        delta = pb.ChatCompletionDelta(content=event.content, refusal=event.refusal)
        if event.logprobs:
            delta.logprobs.extend(_logprobs(event.logprobs))
        return pb.StreamChatCompletionResponse(delta=delta)
    return pb.StreamChatCompletionResponse(summary=pb.ChatCompletionSummary(**_answer_fields(event)))


def token_count(c: TokenCount) -> pb.CountTokensResponse:
    return pb.CountTokensResponse(
        token_count=c.tokens, encoding=c.encoding, encoding_fallback=c.fallback, estimated=c.estimated
    )


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def settings_update(req: pb.ConfigureRequest) -> SettingsUpdate:
    policy = req.retry_policy
    has_policy = req.HasField("retry_policy")
    return SettingsUpdate(
        api_key=req.api_key if req.HasField("api_key") else None,
        endpoint=req.endpoint if req.HasField("endpoint") else None,
        organization=req.organization if req.HasField("organization") else None,
        project=req.project if req.HasField("project") else None,
        default_model=req.default_model if req.HasField("default_model") else None,
        request_timeout=_seconds(req.request_timeout) if req.HasField("request_timeout") else None,
        max_attempts=policy.max_attempts if has_policy and policy.HasField("max_attempts") else None,
        initial_backoff=(
            _seconds(policy.initial_backoff) if has_policy and policy.HasField("initial_backoff") else None
        ),
        max_backoff=_seconds(policy.max_backoff) if has_policy and policy.HasField("max_backoff") else None,
        upstreams=upstream_set(req.upstreams) if req.HasField("upstreams") else None,
        clear_upstreams=req.clear_upstreams,
    )


def configuration(s: Settings) -> pb.Configuration:
    return pb.Configuration(
        api_key_masked=mask_key(s.api_key),
        api_key_set=bool(s.api_key),
        endpoint=s.endpoint,
        organization=s.organization or "",
        project=s.project or "",
        default_model=s.default_model,
        request_timeout=_duration(s.request_timeout),
        retry_policy=pb.RetryPolicy(
            max_attempts=s.retry.max_attempts,
            initial_backoff=_duration(s.retry.initial_backoff),
            max_backoff=_duration(s.retry.max_backoff),
        ),
        generation=s.generation,
        upstreams=_upstream_set_view(s.upstreams) if s.upstreams is not None else None,
        upstreams_source=s.upstreams.source if s.upstreams is not None else "",
    )


# -- the upstream set ------------------------------------------------------------------

UPSTREAM_KINDS: Mapping[int, str] = {
    pb.UPSTREAM_KIND_UNSPECIFIED: "openai",
    pb.UPSTREAM_KIND_OPENAI: "openai",
    pb.UPSTREAM_KIND_AZURE: "azure",
}
_KIND_NUMBERS: Mapping[str, int] = {"openai": pb.UPSTREAM_KIND_OPENAI, "azure": pb.UPSTREAM_KIND_AZURE}
BREAKER_STATES: Mapping[str, int] = {
    "closed": pb.BREAKER_STATE_CLOSED,
    "open": pb.BREAKER_STATE_OPEN,
    "half_open": pb.BREAKER_STATE_HALF_OPEN,
}
_BREAKER_COUNTS = ("failure_threshold", "failure_ratio", "min_calls", "close_after")
_BREAKER_SECONDS = ("window", "probe_interval", "quota_cooldown", "auth_cooldown")


def upstream_set(m: pb.UpstreamSet) -> UpstreamSet:
    """A Configure's upstream set, in the file's shape, through the file's one validation (upstreams.parse)."""
    data: dict[str, Any] = {
        "upstream": [_upstream_table(u) for u in m.upstreams],
        "fallbacks": {f.model: list(f.fallbacks) for f in m.fallbacks},
    }
    if m.HasField("breaker"):
        data["breaker"] = _breaker_table(m.breaker)
    return parse_configured(data)


def _upstream_table(u: pb.Upstream) -> dict[str, Any]:
    table: dict[str, Any] = {"name": u.name, "base_url": u.base_url}
    # An unknown kind number stays unknown: the validation names it.
    table["kind"] = UPSTREAM_KINDS.get(u.kind, f"kind number {u.kind}")
    if u.HasField("api_key"):
        table["api_key"] = u.api_key
    if u.HasField("priority"):
        table["priority"] = u.priority
    if u.HasField("weight"):
        table["weight"] = u.weight
    if u.models:
        table["models"] = list(u.models)
    if u.api_version:
        table["api_version"] = u.api_version
    if u.deployments:
        table["deployments"] = dict(u.deployments)
    if u.organization:
        table["organization"] = u.organization
    if u.project:
        table["project"] = u.project
    if u.HasField("breaker"):
        table["breaker"] = _breaker_table(u.breaker)
    return table


def _breaker_table(b: pb.BreakerPolicy) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name in _BREAKER_COUNTS:
        if b.HasField(name):  # type: ignore[arg-type]
            table[name] = getattr(b, name)
    for name in _BREAKER_SECONDS:
        if b.HasField(name):  # type: ignore[arg-type]
            table[name] = _seconds(getattr(b, name))
    return table


def _breaker_view(b: BreakerPolicy) -> pb.BreakerPolicy:
    return pb.BreakerPolicy(
        failure_threshold=b.failure_threshold,
        failure_ratio=b.failure_ratio,
        window=_duration(b.window),
        min_calls=b.min_calls,
        probe_interval=_duration(b.probe_interval),
        close_after=b.close_after,
        quota_cooldown=_duration(b.quota_cooldown),
        auth_cooldown=_duration(b.auth_cooldown),
    )


def _upstream_view(u: UpstreamSpec) -> pb.Upstream:
    return pb.Upstream(
        name=u.name,
        kind=_KIND_NUMBERS[u.kind],  # type: ignore[arg-type]
        base_url=u.base_url,
        api_key_masked=mask_key(u.api_key),
        priority=u.priority,
        weight=u.weight,
        models=u.models,
        api_version=u.api_version or "",
        deployments=dict(u.deployments),
        organization=u.organization or "",
        project=u.project or "",
        breaker=_breaker_view(u.breaker),
    )


def _fallbacks(pairs: Sequence[tuple[str, Sequence[str]]]) -> list[pb.FallbackModels]:
    return [pb.FallbackModels(model=m, fallbacks=f) for m, f in pairs]


def _upstream_set_view(s: UpstreamSet) -> pb.UpstreamSet:
    """The set as GetConfiguration shows it: keys masked."""
    return pb.UpstreamSet(upstreams=[_upstream_view(u) for u in s.upstreams], fallbacks=_fallbacks(s.fallbacks))


def upstreams(
    statuses: Sequence[UpstreamStatus], fallbacks: Sequence[tuple[str, Sequence[str]]]
) -> pb.ListUpstreamsResponse:
    return pb.ListUpstreamsResponse(
        upstreams=[
            pb.UpstreamStatus(
                name=u.name,
                kind=_KIND_NUMBERS[u.kind],  # type: ignore[arg-type]
                base_url=u.base_url,
                models=u.models,
                priority=u.priority,
                weight=u.weight,
                state=BREAKER_STATES[u.state],  # type: ignore[arg-type]
                in_flight=u.in_flight,
                error_rate=u.error_rate,
                recent_attempts=u.attempts_in_window,
                retry_in=_duration(u.retry_in),
            )
            for u in statuses
        ],
        fallbacks=_fallbacks(fallbacks),
    )


def model_usage(m: ModelTotals) -> pb.ModelUsage:
    return pb.ModelUsage(
        model=m.model,
        requests=m.requests,
        failed_requests=m.failed_requests,
        prompt_tokens=m.prompt_tokens,
        completion_tokens=m.completion_tokens,
        cached_prompt_tokens=m.cached_prompt_tokens,
        reasoning_tokens=m.reasoning_tokens,
        cost_usd=m.cost_usd,
        unpriced_requests=m.unpriced_requests,
    )


BUDGET_PERIODS: Mapping[int, Literal["day", "month"]] = {
    pb.BUDGET_PERIOD_DAY: "day",
    pb.BUDGET_PERIOD_MONTH: "month",
}


def limits(m: pb.ClientLimits) -> Limits:
    period: Literal["day", "month"] | None = None
    if m.budget_period != pb.BUDGET_PERIOD_UNSPECIFIED:
        period = BUDGET_PERIODS.get(m.budget_period)
        if period is None:
            raise invalid([FieldViolation("limits.budget_period", "must be DAY or MONTH")])
    return Limits(
        requests_per_minute=m.requests_per_minute if m.HasField("requests_per_minute") else None,
        tokens_per_minute=m.tokens_per_minute if m.HasField("tokens_per_minute") else None,
        budget_usd=m.budget_usd if m.HasField("budget_usd") else None,
        budget_period=period,
        max_in_flight=m.max_in_flight if m.HasField("max_in_flight") else None,
    )


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def client(r: ClientRecord) -> pb.Client:
    lim = r.limits
    out = pb.Client(
        name=r.name,
        limits=pb.ClientLimits(
            requests_per_minute=lim.requests_per_minute,
            tokens_per_minute=lim.tokens_per_minute,
            budget_usd=lim.budget_usd,
            budget_period={"day": pb.BUDGET_PERIOD_DAY, "month": pb.BUDGET_PERIOD_MONTH}.get(
                lim.budget_period or "", pb.BUDGET_PERIOD_UNSPECIFIED
            ),
            max_in_flight=lim.max_in_flight,
        ),
        create_time=_timestamp(r.created_at),
        token_prefix=r.token_prefix,
        period_spend_usd=r.period_spend_usd,
    )
    if r.revoked_at is not None:
        out.revoke_time.CopyFrom(_timestamp(r.revoked_at))
    return out


# -- conversations (the context assistant) --------------------------------------------

TRIMMING_POLICIES: Mapping[int, Policy] = {
    pb.TRIMMING_POLICY_UNSPECIFIED: Policy.TRIM_OLDEST,
    pb.TRIM_OLDEST: Policy.TRIM_OLDEST,
    pb.SUMMARIZE: Policy.SUMMARIZE,
}
POLICY_NUMBERS: Mapping[Policy, pb.TrimmingPolicy.ValueType] = {
    Policy.TRIM_OLDEST: pb.TRIM_OLDEST,
    Policy.SUMMARIZE: pb.SUMMARIZE,
}
ROLE_NUMBERS: Mapping[str, pb.Role.ValueType] = {name: number for number, name in ROLE_NAMES.items()}  # type: ignore[misc]
# A turn's fields that are chat fields (same names, same types): copied into a ChatCompletionRequest,
# which the one translation and the one validator then read.
_TURN_ONLY_FIELDS = frozenset({"conversation_id"})
# A conversation keeps text: its messages are stored and counted as text (and capped in bytes).
_TEXT_ONLY = "a conversation keeps text messages: content parts (images, audio, files) are not taken by Converse"


def new_conversation(req: pb.CreateConversationRequest) -> NewConversation:
    return NewConversation(
        model=req.model,
        system_message=req.system_message,
        max_context_tokens=req.max_context_tokens if req.HasField("max_context_tokens") else None,
        policy=TRIMMING_POLICIES.get(req.trimming_policy),
        ttl_seconds=_seconds(req.ttl) if req.HasField("ttl") else None,
        labels=dict(req.labels),
    )


def conversation(c: Conversation) -> pb.Conversation:
    out = pb.Conversation(
        id=c.id,
        model=c.model,
        system_message=c.system_message,
        max_context_tokens=c.max_context_tokens,
        trimming_policy=POLICY_NUMBERS[c.policy],
        labels=dict(c.labels),
        create_time=_timestamp(c.created_at),
        update_time=_timestamp(c.updated_at),
        expire_time=_timestamp(c.expires_at),
        ttl=_duration(c.ttl_seconds),
        message_count=c.message_count,
        summarized_messages=c.summarized,
        context_tokens=c.context_tokens,
        context_limit=c.context_limit,
        client=c.owner,
    )
    return out


def chat_message(m: Mapping[str, Any]) -> pb.ChatMessage:
    """A kept message (OpenAI form) as a ChatMessage."""
    out = pb.ChatMessage(role=ROLE_NUMBERS.get(str(m.get("role")), pb.ROLE_UNSPECIFIED), content=m.get("content") or "")
    if m.get("name") is not None:
        out.name = str(m["name"])
    if m.get("tool_call_id") is not None:
        out.tool_call_id = str(m["tool_call_id"])
    for call in m.get("tool_calls") or ():
        function = call.get("function") or {}
        out.tool_calls.append(
            pb.ToolCall(
                id=str(call.get("id") or ""),
                name=str(function.get("name") or ""),
                arguments_json=str(function.get("arguments") or ""),
            )
        )
    return out


def turn_input(
    req: pb.ConverseRequest | pb.StreamConverseRequest, request_id: str | None
) -> tuple[ChatRequest, list[str]]:
    """A turn's new messages and parameters as a ChatRequest (model left to the conversation), and each
    new message's field path for violations."""
    if req.user_message and req.messages:
        raise invalid([FieldViolation("messages", "give either user_message or messages, not both")])
    with_parts = [FieldViolation(f"messages[{i}].parts", _TEXT_ONLY) for i, m in enumerate(req.messages) if m.parts]
    if with_parts:
        raise invalid(with_parts)
    chat = pb.ChatCompletionRequest()
    source: Message = req
    for f in source.DESCRIPTOR.fields:
        if f.name in _TURN_ONLY_FIELDS:
            continue
        if f.is_repeated:
            getattr(chat, f.name).extend(getattr(source, f.name))
        elif f.message_type is not None:
            if source.HasField(f.name):
                getattr(chat, f.name).CopyFrom(getattr(source, f.name))
        elif not f.has_presence or source.HasField(f.name):
            setattr(chat, f.name, getattr(source, f.name))
    paths = [f"messages[{i}]" for i in range(len(req.messages))] if req.messages else ["user_message"]
    return chat_request(chat, request_id), paths


def _turn(r: ChatResult, turn: Turn) -> dict[str, Any]:
    """What ConverseResponse and ConverseSummary both say of a turn."""
    s = turn.summarization
    return {
        "tool_calls": _tool_calls(r.tool_calls),
        "finish_reason": FINISH_REASONS.get(r.finish_reason or "", pb.FINISH_REASON_UNSPECIFIED),
        "model": r.model,
        "response_id": r.id,
        "usage": _usage(r.usage),
        "cost_usd": r.cost_usd,
        "attempts": r.attempts,
        "upstream": r.upstream,
        "context_tokens": turn.context_tokens,
        "trimmed_messages": turn.trimmed,
        "summarization_usage": None if s is None else _usage(s.usage),
        "summarization_cost_usd": None if s is None else s.cost_usd,
        "message_count": turn.message_count,
    }


def converse_response(r: ChatResult, turn: Turn) -> pb.ConverseResponse:
    return pb.ConverseResponse(content=r.content, refusal=r.refusal, **_turn(r, turn))


def converse_event(event: Delta | ChatResult, turn: Turn) -> pb.StreamConverseResponse:
    if isinstance(event, Delta):
        return pb.StreamConverseResponse(delta=pb.ChatCompletionDelta(content=event.content, refusal=event.refusal))
    return pb.StreamConverseResponse(summary=pb.ConverseSummary(**_turn(event, turn)))
