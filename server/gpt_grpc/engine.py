"""The async engine: one chat call, from a request to a recorded result.

A call goes through the engine once:

1. `prepare`: the default model is filled in, the model resolved once
   (`models.Models.resolve`), the request validated against it
   (`chat.validate`, the one validator) and the upstream body built
   (`endpoints.chat_body`: content parts, model quirks, extra_body_json).
   The call keeps the settings snapshot it started with, and the router
   built for that snapshot.
2. Attempts, under the snapshot's retry policy and the server-wide retry
   budget (`retry.call_with_retries`, which tells the `AttemptObserver` -
   metrics - about each attempt and retry). The call's `Route` (the router of
   its snapshot, upstream/routing.py) gives the target of each attempt - an
   upstream, and the model asked of it, a fallback model once every upstream
   of the model failed - and hears how it ended (breakers, failover). Each
   attempt sends through the shared `UpstreamClient` and hands any failure to
   `failures.translate` (one translation, secrets scrubbed, cause chained).
   Every attempt of both kinds of call runs through `_attempts.one`, which
   reports it to the `AttemptTracer` when one is set (spans.py: a span per
   attempt; tracing off, it is None and costs one check). A stream is
   retried (or failed over) only until its first delta is ready for the caller.
3. The result (usage as reported, or counted when the upstream sent none;
   cost from the record of the model that answered) or the failure goes to
   the one `ResultSink`, exactly once per call (`_finish`).

The engine imports neither grpc nor any SDK; the server and the sync `GPT`
facade (compat.py) are its two users.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import orjson

from . import errors, tokens
from .chat import ChatRequest, ChatResult, Delta, TokenLogprob, ToolCall, UrlCitation, Usage, check_model, validate
from .egress import EgressPolicy
from .errors import GatewayError, Reason
from .models import ModelRecord, Models
from .retry import AttemptObserver, RetryBudget, call_with_retries
from .settings import Settings, SettingsUpdate, apply
from .spans import AttemptSpan, AttemptTracer
from .upstream import answers, sse
from .upstream import client as upstream_client
from .upstream.client import MAX_ANSWER_BYTES, UpstreamClient
from .upstream.endpoints import chat_body
from .upstream.failures import Phase, translate
from .upstream.routing import Route, Router, RouterFactory, Routers, Target, UpstreamStatus
from .upstream.scrub import MAX_ID_CHARS, Scrubber, Secrets, scrubbed
from .usage import CallOutcome, ResultSink, UsageTracker

T = TypeVar("T")

# Upstream-controlled names in a result (the model that answered) are bounded like a caller's.
MAX_ANSWERED_MODEL_CHARS = 256


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """A settings snapshot and the router built for it; swapped as one."""

    settings: Settings
    router: Router


@dataclass(frozen=True, slots=True)
class PreparedCall:
    """A validated request with its model resolved, bound to the snapshot it started with."""

    request: ChatRequest  # the default model filled in
    model: ModelRecord
    body: dict[str, Any]  # the upstream body, model quirks applied (no stream flags)
    snapshot: _Snapshot
    # What parents the attempts' spans (the server's span of the call); opaque to the core (spans.py).
    trace: object = None


@dataclass(frozen=True, slots=True)
class _Ask:
    """What one attempt asks for: the call's model, or a fallback model, with its upstream body."""

    model: ModelRecord
    body: dict[str, Any]
    content: bytes


@dataclass(slots=True)  # not frozen: a frozen dataclass pays object.__setattr__ per field, per call
class _Answer:
    """What one successful unary attempt read, before the call's totals are known."""

    content: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str | None
    model: str
    id: str
    usage: Usage
    refusal: str
    request_id: str | None
    logprobs: tuple[TokenLogprob, ...]
    service_tier: str
    system_fingerprint: str
    annotations: tuple[UrlCitation, ...]


class Engine:
    """Chat calls with retries, streams, deadlines, usage and cost; see the module docstring."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        models: Models | None = None,
        usage: UsageTracker | None = None,
        sink: ResultSink | None = None,
        budget: RetryBudget | None = None,
        observer: AttemptObserver | None = None,
        tracer: AttemptTracer | None = None,
        router: RouterFactory | None = None,
        client: UpstreamClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.models = models or Models()
        self.usage = usage or UsageTracker()
        self.sink: ResultSink = sink or self.usage
        self.budget = budget
        self.observer = observer
        self.tracer = tracer
        self.client = client or UpstreamClient()
        self.secrets = Secrets()
        self._router = router or Routers(clock=clock)
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot = self._build(settings or Settings())

    # -- settings: a call reads the snapshot once, so Configure never mixes two -------------

    def _build(self, settings: Settings) -> _Snapshot:
        return _Snapshot(settings, self._router(settings, self.secrets))

    @property
    def settings(self) -> Settings:
        return self._snapshot.settings

    def configure(self, update: SettingsUpdate) -> Settings:
        """Validate `update` whole, then swap the snapshot; raises GatewayError."""
        with self._lock:
            new = apply(self._snapshot.settings, update)
            self._snapshot = self._build(new)
        return new

    def preview(self, update: SettingsUpdate, policy: EgressPolicy | None = None) -> Settings:
        """The settings `update` would give, validated (under the operator's `policy`), without applying them."""
        return apply(self._snapshot.settings, update, policy)

    def install(self, settings: Settings) -> None:
        """Swap in settings made by `preview` (after persisting them, say)."""
        snapshot = self._build(settings)
        with self._lock:
            self._snapshot = snapshot

    async def aclose(self) -> None:
        await self.client.aclose()

    def upstreams(self) -> tuple[list[UpstreamStatus], tuple[tuple[str, tuple[str, ...]], ...]]:
        """Each upstream of the settings in force (breaker state, calls in flight), and the fallback models."""
        snapshot = self._snapshot
        upstreams = snapshot.settings.upstreams
        return snapshot.router.status(), upstreams.fallbacks if upstreams is not None else ()

    # -- one call -----------------------------------------------------------------------

    def prepare(self, request: ChatRequest, *, trace: object = None) -> PreparedCall:
        """Fill in the default model, resolve it, validate against it and build the upstream body.

        `trace`: what the attempts' spans are children of, for the `AttemptTracer` (spans.py).
        """
        snapshot = self._snapshot
        if not request.model:
            request = dataclasses.replace(request, model=self.model_name(request.model, snapshot.settings))
        # A name that is not one (empty, too long) is reported by validate, not looked up.
        model = self.models.resolve(request.model) if check_model(request.model) is None else None
        violations = validate(request, model)
        if violations or model is None:
            raise errors.invalid(violations)
        return PreparedCall(request, model, chat_body(request, model), snapshot, trace)

    def model_name(self, requested: str, settings: Settings | None = None) -> str:
        """The model a call is for: the one the caller named, else the default model (filled in here only)."""
        return requested or (settings or self._snapshot.settings).default_model

    def _attempt_timeout(self, settings: Settings, deadline: float | None) -> tuple[float, bool]:
        """(seconds for this attempt, whether the caller's deadline is what limits it)."""
        timeout = settings.request_timeout
        if deadline is None:
            return timeout, False
        left = deadline - self._clock()
        if left <= 0:
            raise GatewayError(Reason.DEADLINE_EXCEEDED, "the caller's deadline passed")
        return (left, True) if left < timeout else (timeout, False)

    async def _attempts(
        self,
        call: PreparedCall,
        deadline: float | None,
        attempt: Callable[[Target, _Ask, float, bool, AttemptSpan | None], Awaitable[T]],
        encode: Callable[[Mapping[str, Any]], bytes],
        *,
        stream: bool,
    ) -> tuple[T, int, Target, _Ask]:
        """Run `attempt(target, ask, seconds, by_deadline, span)` under the retry rules.

        Returns (its result, attempts, the target and ask that answered); the
        target's lease is still held (the caller releases it). The first target
        is chosen before any attempt starts, so a call that no upstream can
        serve (no key, no upstream for the model, every breaker open) fails
        without counting as an attempt. With a tracer, each attempt has a span
        (None without): ended here when the attempt fails; on success `attempt`
        (unary) or the stream's end ends it.
        """
        route = call.snapshot.router.route(call.model.name)
        try:
            first = route.take()
        except GatewayError as exc:
            _annotate(exc, route)
            raise
        asks = {call.model.name: _Ask(call.model, call.body, encode(call.body))}
        answered: list[tuple[Target, _Ask]] = []
        tracer = self.tracer
        failed_spans: list[AttemptSpan] = []

        async def one(number: int) -> T:
            # Every attempt of every call passes here, with its endpoint.
            target = first if number == 1 else route.take()
            span: AttemptSpan | None = None
            try:
                ask = asks.get(target.model) or self._ask(call, target.model, encode, asks)
                if tracer is not None:
                    # A fallback model's attempt is traced as a request for that model.
                    traced = (
                        call if ask.model is call.model else dataclasses.replace(call, model=ask.model, body=ask.body)
                    )
                    after = failed_spans[-1] if failed_spans else None
                    span = tracer.attempt(traced, target.endpoint, number, stream=stream, after=after)
                seconds, by_deadline = self._attempt_timeout(call.snapshot.settings, deadline)
                result = await attempt(target, ask, seconds, by_deadline, span)
            except BaseException as exc:
                if span is not None:
                    span.failed(exc)
                    span.end()
                    failed_spans.append(span)
                if isinstance(exc, GatewayError):
                    route.failed(target, exc)
                else:
                    target.lease.release()
                raise
            target.lease.succeeded()
            answered.append((target, ask))
            return result

        try:
            result, attempts = await call_with_retries(
                one,
                call.snapshot.settings.retry,
                deadline=deadline,
                budget=self.budget,
                observer=self.observer,
                clock=self._clock,
                sleep=self._sleep,
                failover=route if route.named else None,
            )
        except GatewayError as exc:
            _annotate(exc, route)
            raise
        except BaseException:
            if not answered:
                first.lease.release()  # cancelled before the first attempt began
            raise
        target, ask = answered[-1]
        return result, attempts, target, ask

    def _ask(
        self, call: PreparedCall, model: str, encode: Callable[[Mapping[str, Any]], bytes], asks: dict[str, _Ask]
    ) -> _Ask:
        """The ask of a fallback model: its record and its body (its own quirks), built once per call."""
        record = self.models.resolve(model)
        body = chat_body(dataclasses.replace(call.request, model=model), record)
        ask = asks[model] = _Ask(record, body, encode(body))
        return ask

    def _finish(
        self,
        call: PreparedCall,
        result: ChatResult | None,
        error: BaseException | None,
        model: ModelRecord | None = None,
    ) -> None:
        """The one place a finished call is recorded: under the model that answered (a fallback's, say)."""
        self.sink.record(CallOutcome(model or call.model, result, error, call.request.request_id))

    # -- a whole answer -----------------------------------------------------------------

    async def acomplete(self, request: ChatRequest | PreparedCall, *, deadline: float | None = None) -> ChatResult:
        """One whole answer. `deadline` is a `time.monotonic()` instant."""
        call = request if isinstance(request, PreparedCall) else self.prepare(request)

        async def attempt(
            target: Target, ask: _Ask, seconds: float, by_deadline: bool, span: AttemptSpan | None
        ) -> _Answer:
            endpoint = target.endpoint
            phase, request_id, status = Phase.SEND, None, None
            try:
                async with asyncio.timeout(seconds):
                    async with self.client.post(
                        endpoint,
                        ask.content,
                        timeout=seconds,
                        client_request_id=call.request.request_id,
                        trace_headers=() if span is None else span.headers,
                    ) as response:
                        request_id, status = response.headers.get("x-request-id"), response.status_code
                        phase = Phase.BODY
                        raw = await upstream_client.read(response)
                answer = self._answer(ask, orjson.loads(raw), request_id, endpoint.scrubber)
            except BaseException as exc:
                _fail(exc, phase, by_deadline, endpoint.scrubber, request_id, status)
            if span is not None:
                span.answered(answer)
                span.end()
            return answer

        try:
            answer, attempts, target, ask = await self._attempts(call, deadline, attempt, _unary_body, stream=False)
        except BaseException as exc:
            self._finish(call, None, exc)
            raise
        target.lease.release()
        result = ChatResult(
            content=answer.content,
            tool_calls=answer.tool_calls,
            finish_reason=answer.finish_reason,
            model=answer.model,
            id=answer.id,
            usage=answer.usage,
            cost_usd=self.models.cost_usd(ask.model, answer.model, answer.usage),
            attempts=attempts,
            refusal=answer.refusal,
            request_id=answer.request_id,
            upstream=target.upstream,
            logprobs=answer.logprobs,
            service_tier=answer.service_tier,
            system_fingerprint=answer.system_fingerprint,
            annotations=answer.annotations,
        )
        self._finish(call, result, None, ask.model)
        return result

    def _answer(self, ask: _Ask, data: Any, request_id: str | None, scrubber: Scrubber) -> _Answer:
        """A completion body read; anything missing or misshapen raises (an unreadable answer)."""
        choices = data["choices"]
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            raise ValueError("no choices")
        choice = choices[0]
        message = choice.get("message") or {}
        content = message.get("content") or ""
        calls = tuple(
            ToolCall(
                id=str(c.get("id") or ""),
                name=str((c.get("function") or {}).get("name") or ""),
                arguments=str((c.get("function") or {}).get("arguments") or ""),
            )
            for c in message.get("tool_calls") or ()
        )
        return _Answer(
            content=content,
            tool_calls=calls,
            finish_reason=choice.get("finish_reason"),
            model=_answered(data.get("model"), ask.model, scrubber),
            id=scrubbed(str(data.get("id") or ""), scrubber, MAX_ID_CHARS) or "",
            usage=self._usage(data.get("usage"), ask, content, calls),
            refusal=message.get("refusal") or "",
            request_id=scrubbed(request_id, scrubber, MAX_ID_CHARS),
            logprobs=answers.logprobs(choice["logprobs"]) if choice.get("logprobs") else (),
            service_tier=scrubbed(answers.text(data.get("service_tier")), scrubber, MAX_ID_CHARS) or "",
            system_fingerprint=scrubbed(answers.text(data.get("system_fingerprint")), scrubber, MAX_ID_CHARS) or "",
            annotations=answers.citations(message["annotations"]) if message.get("annotations") else (),
        )

    def _usage(self, reported: object, ask: _Ask, content: str, calls: Sequence[ToolCall]) -> Usage:
        if isinstance(reported, Mapping) and "prompt_tokens" in reported:
            prompt_details = reported.get("prompt_tokens_details") or {}
            completion_details = reported.get("completion_tokens_details") or {}
            prompt = _count(reported.get("prompt_tokens"))
            completion = _count(reported.get("completion_tokens"))
            return Usage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=_count(reported.get("total_tokens")) or prompt + completion,
                cached_prompt_tokens=_count(prompt_details.get("cached_tokens")),
                reasoning_tokens=_count(completion_details.get("reasoning_tokens")),
            )
        # Some OpenAI-compatible servers send no usage: count it ourselves.
        model, body = ask.model, ask.body
        prompt = tokens.count_messages(
            body["messages"],
            model.name,
            tools=body.get("tools"),
            encoding=model.encoding,
            image_billing=model.image_tokens,
        ).tokens
        generated = content + "".join(c.name + c.arguments for c in calls)
        completion = tokens.count_text(generated, model.name, encoding=model.encoding).tokens
        return Usage(prompt, completion, prompt + completion, estimated=True)

    # -- a stream -----------------------------------------------------------------------

    async def astream(
        self, request: ChatRequest | PreparedCall, *, deadline: float | None = None
    ) -> AsyncIterator[Delta | ChatResult]:
        """Deltas as they arrive, then one ChatResult.

        Retries only until the first delta is ready for the caller; a failure
        after that raises a GatewayError into the stream. Closing the
        iterator (the caller went away) closes the upstream request at once.
        """
        call = request if isinstance(request, PreparedCall) else self.prepare(request)
        state = sse.StreamState()

        async def attempt(
            target: Target, ask: _Ask, seconds: float, by_deadline: bool, span: AttemptSpan | None
        ) -> tuple[contextlib.AsyncExitStack, AsyncIterator[Mapping[str, Any]], AttemptSpan | None]:
            endpoint = target.endpoint
            stack = contextlib.AsyncExitStack()
            state.reset()
            state.request_id = state.status = None
            phase = Phase.SEND
            try:
                async with asyncio.timeout(seconds):
                    response = await stack.enter_async_context(
                        self.client.post(
                            endpoint,
                            ask.content,
                            timeout=seconds,
                            client_request_id=call.request.request_id,
                            trace_headers=() if span is None else span.headers,
                        )
                    )
                    state.request_id, state.status = response.headers.get("x-request-id"), response.status_code
                    phase = Phase.STREAM
                    events = sse.events(sse.iter_lines(response, MAX_ANSWER_BYTES))
                    # Read until something can reach the caller: until then a
                    # retry is invisible to it.
                    while not state.pending and not state.done:
                        await state.advance(events)
                if span is not None and state.pending:
                    span.first_chunk()
                return stack, events, span
            except BaseException as exc:
                await stack.aclose()
                _fail(exc, phase, by_deadline, endpoint.scrubber, state.request_id, state.status)

        try:
            (stack, events, span), attempts, target, ask = await self._attempts(
                call, deadline, attempt, _stream_body, stream=True
            )
        except BaseException as exc:
            self._finish(call, None, exc)
            raise
        endpoint = target.endpoint
        try:
            async with stack:
                while True:
                    for delta in state.take():
                        yield delta
                    if state.done:
                        break
                    try:
                        await state.advance(events)
                    except BaseException as exc:
                        passed = deadline is not None and self._clock() >= deadline
                        _fail(exc, Phase.STREAM, passed, endpoint.scrubber, state.request_id, state.status)
            calls = state.tool_calls()
            text = "".join(state.content)
            usage = self._usage(state.usage, ask, text, calls)
            model = _answered(state.model, ask.model, endpoint.scrubber)
            result = ChatResult(
                content=text,
                tool_calls=calls,
                finish_reason=state.finish_reason,
                model=model,
                id=scrubbed(state.id, endpoint.scrubber, MAX_ID_CHARS) or "",
                usage=usage,
                cost_usd=self.models.cost_usd(ask.model, model, usage),
                attempts=attempts,
                refusal="".join(state.refusal),
                request_id=scrubbed(state.request_id, endpoint.scrubber, MAX_ID_CHARS),
                upstream=target.upstream,
                service_tier=scrubbed(state.service_tier, endpoint.scrubber, MAX_ID_CHARS) or "",
                system_fingerprint=scrubbed(state.system_fingerprint, endpoint.scrubber, MAX_ID_CHARS) or "",
                annotations=tuple(state.annotations),
            )
        except BaseException as exc:
            if span is not None:  # the successful attempt's span lasts as long as its stream
                span.failed(exc)
                span.end()
            if isinstance(exc, GatewayError):
                exc.attempts = attempts
                if target.named:
                    exc.upstream = target.upstream
                target.lease.failed(exc)  # after the first delta: no failover, but the breaker hears of it
            self._finish(call, None, exc, ask.model)
            raise
        finally:
            target.lease.release()
        if span is not None:
            span.answered(result)
            span.end()
        self._finish(call, result, None, ask.model)
        yield result


def _unary_body(body: Mapping[str, Any]) -> bytes:
    return _encode({**body, "stream": False})


def _stream_body(body: Mapping[str, Any]) -> bytes:
    return _encode({**body, "stream": True, "stream_options": {"include_usage": True}})


def _annotate(error: GatewayError, route: Route) -> None:
    """Name the upstreams in the error that ends a call routed over several of them."""
    if not route.named or not route.history:
        return
    error.upstream_attempts = tuple((a.upstream, a.model, a.outcome) for a in route.history)
    if error.upstream and f'"{error.upstream}"' not in error.message:
        error.message = f'{error.message} (upstream "{error.upstream}")'
        error.args = (error.message,)


def _fail(
    exc: BaseException,
    phase: Phase,
    by_deadline: bool,
    scrubber: Scrubber,
    request_id: str | None,
    http_status: int | None,
) -> NoReturn:
    """Raise what `exc` means to the caller (failures.translate), `exc` chained as its cause."""
    error = translate(
        exc, phase=phase, by_deadline=by_deadline, scrubber=scrubber, request_id=request_id, http_status=http_status
    )
    if error is exc:
        raise exc
    raise error from exc


def _encode(body: Mapping[str, Any]) -> bytes:
    """The body's JSON, once per call (not per attempt)."""
    content = orjson.dumps(body)
    if len(content) < 4096:
        content = bytes(memoryview(content))  # orjson's buffer is 4 KB whatever the length
    return content


def _answered(model: object, asked: ModelRecord, scrubber: Scrubber) -> str:
    """The model that answered, as the upstream named it (bounded), else the one asked for."""
    return scrubbed(str(model or ""), scrubber, MAX_ANSWERED_MODEL_CHARS) or asked.name


def _count(value: object) -> int:
    """A token count from the upstream's usage: a non-negative integer, or 0."""
    if type(value) is int:
        return value if value > 0 else 0
    if isinstance(value, float) and math.isfinite(value):
        return max(0, int(value))
    return 0
