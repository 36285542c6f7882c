"""The GPT core: the original module's interface over an async engine.

`GPT` keeps the original API (`api_key` and `endpoint` properties validated as
they are set, `chat_completion(...) -> str`, `count_tokens(text, model)`) and
adds the async calls the gRPC server uses: `acomplete` (whole answer) and
`astream` (deltas, then the result).

One shared `openai.AsyncOpenAI` per settings snapshot, all over one pooled
HTTP client, with the SDK's own retries off: `retry.call_with_retries`
decides every retry. The SDK builds requests and raises its typed errors; the
body is read raw and parsed once with orjson, skipping the SDK's pydantic
models on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
import openai
import orjson

from . import errors, tokens
from .catalog import Catalog, adapt_request
from .chat import ChatRequest, ChatResult, Delta, ToolCall, Usage, check_model, validate
from .egress import EgressPolicy
from .errors import GatewayError, Reason
from .pricing import Pricing
from .retry import AttemptObserver, RetryBudget, call_with_retries
from .settings import Settings, SettingsUpdate, apply, mask_key
from .transport import KEEPALIVE_EXPIRY, transport_for
from .upstream import chat_endpoint, iter_lines
from .usage import UsageTracker

T = TypeVar("T")

# Enough for thousands of slow calls in flight; the SDK's default (1,000)
# makes calls queue for a pooled connection.
DEFAULT_MAX_CONNECTIONS = 20_000
DEFAULT_KEEPALIVE_CONNECTIONS = 1_000
CONNECT_TIMEOUT = 5.0


@dataclass(frozen=True)
class _Upstream:
    """A settings snapshot and the SDK client built from it; swapped as one."""

    settings: Settings
    client: openai.AsyncOpenAI | None


class _StreamEnded(Exception):
    """The SSE stream ended; `complete` says whether it ended properly."""


class _LoopThread:
    """An event loop on a daemon thread, for the synchronous facade."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gpt-grpc-sync", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


class GPT:
    """OpenAI-compatible chat with retries, token counting and cost tracking."""

    def __init__(
        self,
        api_key: str | None = None,
        endpoint: str | None = None,
        *,
        settings: Settings | None = None,
        catalog: Catalog | None = None,
        pricing: Pricing | None = None,
        usage: UsageTracker | None = None,
        budget: RetryBudget | None = None,
        observer: AttemptObserver | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog = catalog or Catalog()
        self.pricing = pricing or Pricing()
        self.usage = usage or UsageTracker()
        self.budget = budget
        self.observer = observer
        self._max_connections = max_connections
        self._sleep = sleep
        self._clock = clock
        self._http: httpx2.AsyncClient | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self._sync: _LoopThread | None = None
        self._lock = threading.Lock()
        self._upstream = _Upstream(settings or Settings(), None)
        if endpoint is not None:
            self.endpoint = endpoint
        if api_key is not None:
            self.api_key = api_key

    # -- the original module's interface -------------------------------------

    @property
    def api_key(self) -> str | None:
        return self._upstream.settings.api_key

    @api_key.setter
    def api_key(self, key: str) -> None:
        self._configure_or_value_error(SettingsUpdate(api_key=key))

    @property
    def endpoint(self) -> str:
        return self._upstream.settings.endpoint

    @endpoint.setter
    def endpoint(self, url: str) -> None:
        self._configure_or_value_error(SettingsUpdate(endpoint=url))

    def chat_completion(
        self,
        model: str,
        system_message: str,
        user_message: str,
        temperature: float = 0.7,
        max_tokens: int | None = None,
    ) -> str:
        """Generate a response; transient upstream errors are retried."""
        params: dict[str, Any] = {"temperature": temperature}
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        request = ChatRequest(model=model, messages=pair_messages(system_message, user_message), params=params)
        return self._run_sync(self.acomplete(request)).content

    def count_tokens(self, text: str, model: str = "gpt-4o-mini") -> int:
        """Tokens of `text` for `model` (offline; unknown models use o200k_base)."""
        bad_model = check_model(model)
        if bad_model:
            raise ValueError(f"model {bad_model}")
        return tokens.count_text(text, model).tokens

    def close(self) -> None:
        """Release the HTTP pool (and the sync loop thread, if one was started)."""
        if self._sync is not None:
            self._sync.run(self.aclose())
            self._sync.stop()
            self._sync = None
        elif self._http is not None and self._http_loop is not None and not self._http_loop.is_closed():
            raise RuntimeError("call `await gpt.aclose()` from the event loop that used it")

    def __repr__(self) -> str:
        s = self._upstream.settings
        return f"GPT(api_key={mask_key(s.api_key)!r}, endpoint={s.endpoint!r})"

    # -- settings -------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self._upstream.settings

    def configure(self, update: SettingsUpdate) -> Settings:
        """Validate `update` whole, then swap the snapshot; raises GatewayError."""
        with self._lock:
            new = apply(self._upstream.settings, update)
            self._upstream = _Upstream(new, None)
        return new

    def preview(self, update: SettingsUpdate, policy: EgressPolicy | None = None) -> Settings:
        """The settings `update` would give, validated (under the operator's `policy`), without applying them."""
        return apply(self._upstream.settings, update, policy)

    def install(self, settings: Settings) -> None:
        """Swap in settings made by `preview` (after persisting them, say)."""
        with self._lock:
            self._upstream = _Upstream(settings, None)

    def _configure_or_value_error(self, update: SettingsUpdate) -> None:
        try:
            self.configure(update)
        except GatewayError as exc:
            raise ValueError(exc.message) from None

    def _snapshot(self) -> _Upstream:
        """The settings and client a call uses from start to end."""
        upstream = self._upstream
        if upstream.client is None and upstream.settings.api_key:
            client = self._build_client(upstream.settings)
            with self._lock:
                if self._upstream is upstream:  # not replaced meanwhile
                    upstream = _Upstream(upstream.settings, client)
                    self._upstream = upstream
                else:
                    upstream = _Upstream(upstream.settings, client)
        return upstream

    def _http_client(self) -> httpx2.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None:
            limits = httpx2.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=DEFAULT_KEEPALIVE_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_EXPIRY,  # below common servers' 5 s (see transport.py)
            )
            self._http = openai.DefaultAsyncHttpx2Client(
                limits=limits,
                # Redirects could carry prompts somewhere the operator did not choose.
                follow_redirects=False,
                transport=_transport(limits),
            )
            self._http_loop = loop
        elif self._http_loop is not loop:
            raise RuntimeError("a GPT instance serves one event loop; use one GPT per loop")
        return self._http

    def _build_client(self, settings: Settings) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=settings.api_key,
            organization=settings.organization,
            project=settings.project,
            base_url=settings.endpoint,
            max_retries=0,  # tenacity decides every retry
            timeout=settings.request_timeout,
            http_client=self._http_client(),
        )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
            self._http_loop = None

    def _run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    self._sync = _LoopThread()
        try:
            return self._sync.run(coro)
        except GatewayError:
            raise
        except BaseException:
            coro.close()
            raise

    # -- the async engine ------------------------------------------------------

    def prepare(self, request: ChatRequest) -> tuple[ChatRequest, dict[str, Any]]:
        """Fill in the default model, validate, and build the upstream body."""
        settings = self._upstream.settings
        if not request.model:
            request = dataclasses.replace(request, model=settings.default_model)
        violations = validate(request)
        if violations:
            raise errors.invalid(violations)
        body = adapt_request(request.body(), self.catalog.lookup(request.model), request.model)
        return request, body

    def _require_client(self, upstream: _Upstream) -> openai.AsyncOpenAI:
        if upstream.client is None:
            raise GatewayError(
                Reason.API_KEY_MISSING,
                "no upstream API key is configured (set OPENAI_API_KEY or call Configure)",
            )
        return upstream.client

    def _attempt_timeout(self, settings: Settings, deadline: float | None) -> tuple[float, bool]:
        """(seconds for this attempt, whether the caller's deadline is what limits it)."""
        timeout = settings.request_timeout
        if deadline is None:
            return timeout, False
        left = deadline - self._clock()
        if left <= 0:
            raise GatewayError(Reason.DEADLINE_EXCEEDED, "the caller's deadline passed")
        return (left, True) if left < timeout else (timeout, False)

    @staticmethod
    def _timeout_error(by_deadline: bool) -> GatewayError:
        if by_deadline:
            return GatewayError(Reason.DEADLINE_EXCEEDED, "the caller's deadline passed while waiting upstream")
        return GatewayError(Reason.UPSTREAM_TIMEOUT, "upstream did not answer within the request timeout")

    async def _with_retries(
        self,
        attempt: Callable[[int], Awaitable[T]],
        request: ChatRequest,
        settings: Settings,
        deadline: float | None,
    ) -> tuple[T, int]:
        """The snapshot's retry policy under the server-wide budget; a final failure is counted."""
        try:
            return await call_with_retries(
                attempt,
                settings.retry,
                deadline=deadline,
                budget=self.budget,
                observer=self.observer,
                clock=self._clock,
                sleep=self._sleep,
            )
        except GatewayError:
            self.usage.record_failure(request.model)
            raise

    async def acomplete(self, request: ChatRequest, *, deadline: float | None = None) -> ChatResult:
        """One whole answer. `deadline` is a `time.monotonic()` instant."""
        request, body = self.prepare(request)
        upstream = self._snapshot()
        endpoint = chat_endpoint(self._require_client(upstream), self._http_client())
        settings = upstream.settings
        headers = _request_headers(request)

        async def attempt(_: int) -> tuple[Mapping[str, Any], str | None]:
            timeout, by_deadline = self._attempt_timeout(settings, deadline)
            try:
                async with asyncio.timeout(timeout):
                    async with endpoint.post(
                        {**body, "stream": False},
                        timeout=timeout,
                        connect_timeout=CONNECT_TIMEOUT,
                        headers=headers,
                    ) as response:
                        raw = await response.aread()
                        request_id = response.headers.get("x-request-id")
            except TimeoutError:
                raise self._timeout_error(by_deadline) from None
            except openai.APITimeoutError:
                raise self._timeout_error(by_deadline) from None
            except openai.OpenAIError as exc:
                raise errors.from_openai(exc) from None
            except httpx2.TimeoutException:
                raise self._timeout_error(by_deadline) from None
            except httpx2.HTTPError:
                raise GatewayError(Reason.UPSTREAM_UNAVAILABLE, "upstream connection dropped mid-response") from None
            return _parse_completion(raw, request_id), request_id

        (data, request_id), attempts = await self._with_retries(attempt, request, settings, deadline)
        result = self._result_from_completion(request, body, data, attempts, request_id)
        self.usage.record_success(request.model, result.usage, result.cost_usd)
        return result

    def _result_from_completion(
        self,
        request: ChatRequest,
        body: Mapping[str, Any],
        data: Mapping[str, Any],
        attempts: int,
        request_id: str | None,
    ) -> ChatResult:
        choice = data["choices"][0]
        message = choice.get("message") or {}
        content = message.get("content") or ""
        calls = tuple(
            ToolCall(
                id=str(call.get("id") or ""),
                name=str((call.get("function") or {}).get("name") or ""),
                arguments=str((call.get("function") or {}).get("arguments") or ""),
            )
            for call in message.get("tool_calls") or ()
        )
        model = str(data.get("model") or request.model)
        usage = self._usage(data.get("usage"), body, request.model, content, calls)
        return ChatResult(
            content=content,
            tool_calls=calls,
            finish_reason=choice.get("finish_reason"),
            model=model,
            id=str(data.get("id") or ""),
            usage=usage,
            cost_usd=self._cost(model, request.model, usage),
            attempts=attempts,
            refusal=message.get("refusal") or "",
            request_id=request_id,
        )

    def _usage(
        self,
        reported: object,
        body: Mapping[str, Any],
        model: str,
        content: str,
        calls: Sequence[ToolCall],
    ) -> Usage:
        if isinstance(reported, Mapping) and "prompt_tokens" in reported:
            prompt_details = reported.get("prompt_tokens_details") or {}
            completion_details = reported.get("completion_tokens_details") or {}
            prompt = int(reported.get("prompt_tokens") or 0)
            completion = int(reported.get("completion_tokens") or 0)
            return Usage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=int(reported.get("total_tokens") or prompt + completion),
                cached_prompt_tokens=int(prompt_details.get("cached_tokens") or 0),
                reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
            )
        # Some OpenAI-compatible servers send no usage: count it ourselves.
        prompt = tokens.count_messages(body["messages"], model, tools=body.get("tools")).tokens
        generated = content + "".join(c.name + c.arguments for c in calls)
        completion = tokens.count_text(generated, model).tokens
        return Usage(prompt, completion, prompt + completion, estimated=True)

    def _cost(self, answered_model: str, requested_model: str, usage: Usage) -> float | None:
        for model in (answered_model, requested_model):
            cost = self.pricing.cost_usd(
                model, usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens
            )
            if cost is not None:
                return cost
        return None

    async def astream(
        self, request: ChatRequest, *, deadline: float | None = None
    ) -> AsyncIterator[Delta | ChatResult]:
        """Deltas as they arrive, then one ChatResult.

        Retries only until the first delta is ready for the caller; a failure
        after that raises a GatewayError into the stream. Closing the
        iterator (the caller went away) closes the upstream request at once.
        """
        request, body = self.prepare(request)
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        upstream = self._snapshot()
        endpoint = chat_endpoint(self._require_client(upstream), self._http_client())
        settings = upstream.settings
        headers = _request_headers(request)
        state = _StreamState()

        async def attempt(_: int) -> tuple[contextlib.AsyncExitStack, AsyncIterator[Mapping[str, Any]]]:
            timeout, by_deadline = self._attempt_timeout(settings, deadline)
            stack = contextlib.AsyncExitStack()
            state.reset()
            try:
                async with asyncio.timeout(timeout):
                    response = await stack.enter_async_context(
                        endpoint.post(body, timeout=timeout, connect_timeout=CONNECT_TIMEOUT, headers=headers)
                    )
                    state.request_id = response.headers.get("x-request-id")
                    events = _sse_events(iter_lines(response))
                    # Read until something can reach the caller: until then a
                    # retry is invisible to it.
                    while not state.pending and not state.done:
                        await state.advance(events)
                return stack, events
            except BaseException as exc:
                await stack.aclose()
                if isinstance(exc, GatewayError):
                    raise
                raise _stream_error(exc, by_deadline, self._timeout_error) from None

        (stack, events), attempts = await self._with_retries(attempt, request, settings, deadline)
        try:
            async with stack:
                while True:
                    for delta in state.take():
                        yield delta
                    if state.done:
                        break
                    try:
                        await state.advance(events)
                    except (GatewayError, asyncio.CancelledError, GeneratorExit):
                        raise
                    except Exception as exc:
                        raise _stream_error(exc, False, self._timeout_error) from None
        except GatewayError as exc:
            exc.attempts = attempts
            self.usage.record_failure(request.model)
            raise
        except BaseException:
            self.usage.record_failure(request.model)
            raise
        calls = state.tool_calls()
        content = "".join(state.content)
        usage = self._usage(state.usage, body, request.model, content, calls)
        model = state.model or request.model
        result = ChatResult(
            content=content,
            tool_calls=calls,
            finish_reason=state.finish_reason,
            model=model,
            id=state.id,
            usage=usage,
            cost_usd=self._cost(model, request.model, usage),
            attempts=attempts,
            refusal="".join(state.refusal),
            request_id=state.request_id,
        )
        self.usage.record_success(request.model, usage, result.cost_usd)
        yield result


def _request_headers(request: ChatRequest) -> dict[str, str] | None:
    """The caller's request id travels upstream (OpenAI's X-Client-Request-Id)."""
    return {"X-Client-Request-Id": request.request_id} if request.request_id else None


def _transport(limits: httpx2.Limits) -> httpx2.AsyncBaseTransport | None:
    """The upstream pool: transport.FastTransport (httpx2's for requests a system proxy applies to), unless
    GPT_GRPC_UPSTREAM_TRANSPORT=httpx asks for httpx2's own (None: httpx2 decides)."""
    if os.environ.get("GPT_GRPC_UPSTREAM_TRANSPORT", "fast") == "httpx":
        return None
    return transport_for(limits, fallback=httpx2.AsyncHTTPTransport(limits=limits))


def pair_messages(system_message: str, user_message: str) -> list[dict[str, Any]]:
    """The original module's (system, user) pair as chat messages."""
    messages: list[dict[str, Any]] = []
    if system_message:
        messages.append({"role": "system", "content": system_message})
    messages.append({"role": "user", "content": user_message})
    return messages


def _parse_completion(raw: bytes, request_id: str | None) -> Mapping[str, Any]:
    try:
        data = orjson.loads(raw)
        choices = data["choices"]
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            raise ValueError("no choices")
        return data  # type: ignore[no-any-return]
    except (ValueError, KeyError, TypeError):
        raise GatewayError(
            Reason.UPSTREAM_RESPONSE_INVALID,
            "upstream sent a completion the gateway cannot read",
            http_status=200,
            request_id=request_id,
        ) from None


def _stream_error(
    exc: BaseException, by_deadline: bool, timeout_error: Callable[[bool], GatewayError]
) -> BaseException:
    """The GatewayError for a failure while opening or reading a stream."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt, SystemExit)):
        return exc
    if isinstance(exc, (TimeoutError, openai.APITimeoutError, httpx2.TimeoutException)):
        return timeout_error(by_deadline)
    if isinstance(exc, openai.OpenAIError):
        return errors.from_openai(exc)
    if isinstance(exc, _StreamEnded):
        return GatewayError(Reason.UPSTREAM_UNAVAILABLE, "upstream stream ended before the answer was complete")
    if isinstance(exc, httpx2.HTTPError):
        return GatewayError(Reason.UPSTREAM_UNAVAILABLE, "upstream connection dropped mid-stream")
    if isinstance(exc, (ValueError, KeyError, TypeError, IndexError)):
        return GatewayError(Reason.UPSTREAM_RESPONSE_INVALID, "upstream sent a stream the gateway cannot read")
    return GatewayError(Reason.INTERNAL_ERROR, "internal error while reading the upstream stream")


async def _sse_events(lines: AsyncIterator[str]) -> AsyncIterator[Mapping[str, Any]]:
    """Parsed JSON of each SSE `data:` event; ends at `[DONE]`.

    Raises _StreamEnded if the body ends without `[DONE]`, ValueError on an
    event that is not JSON, GatewayError on an in-stream error object.
    """
    data: list[str] = []
    async for line in lines:
        if line:
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
            continue  # event:, id:, retry: and comments carry nothing we use
        if not data:
            continue
        payload = "\n".join(data)
        data.clear()
        if payload == "[DONE]":
            await _drain_after_done(lines)
            return
        event = orjson.loads(payload)
        if not isinstance(event, Mapping):
            raise ValueError("event is not an object")
        if "error" in event and "choices" not in event:
            raise errors.from_http(500, {}, event)
        yield event
    if data and "\n".join(data) == "[DONE]":
        return
    raise _StreamEnded()


# After `[DONE]` only the end of the body is left (the chunked terminator).
# Reading it is what lets httpx put the connection back in the pool; leaving it
# unread makes it close the connection, and every stream costs a new one.
_MAX_LINES_AFTER_DONE = 16
_DRAIN_SECONDS = 0.5


async def _drain_after_done(lines: AsyncIterator[str]) -> None:
    """Read what follows `[DONE]`, briefly and boundedly; the answer is complete either way."""
    with contextlib.suppress(TimeoutError, httpx2.HTTPError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            count = 0
            async for _ in lines:
                count += 1
                if count >= _MAX_LINES_AFTER_DONE:
                    break


class _StreamState:
    """What a stream has said so far."""

    def __init__(self) -> None:
        self.request_id: str | None = None
        self.reset()

    def reset(self) -> None:
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.pending: list[Delta] = []
        self.calls: dict[int, dict[str, str]] = {}
        self.finish_reason: str | None = None
        self.model = ""
        self.id = ""
        self.usage: Mapping[str, Any] | None = None
        self.done = False

    def feed(self, event: Mapping[str, Any]) -> None:
        self.model = self.model or str(event.get("model") or "")
        self.id = self.id or str(event.get("id") or "")
        if event.get("usage"):
            self.usage = event["usage"]
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            refusal = delta.get("refusal") or ""
            if text or refusal:
                self.content.append(text)
                self.refusal.append(refusal)
                self.pending.append(Delta(text, refusal))
            for call in delta.get("tool_calls") or ():
                slot = self.calls.setdefault(int(call.get("index") or 0), {"id": "", "name": "", "args": ""})
                fn = call.get("function") or {}
                slot["id"] = slot["id"] or str(call.get("id") or "")
                slot["name"] += str(fn.get("name") or "")
                slot["args"] += str(fn.get("arguments") or "")
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])

    async def advance(self, events: AsyncIterator[Mapping[str, Any]]) -> None:
        """Feed the next event; at the end, check the answer was complete.

        Reading on to `[DONE]` (past the usage chunk) lets the connection go
        back to the pool instead of being closed.
        """
        try:
            self.feed(await anext(events))
        except (StopAsyncIteration, _StreamEnded):
            # A stream cut before its finish_reason is an error; one that only
            # lacks the final `[DONE]` (some compatible servers) is complete.
            if self.finish_reason is None:
                raise _StreamEnded() from None
            self.done = True

    def take(self) -> list[Delta]:
        out, self.pending = self.pending, []
        return out

    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(c["id"], c["name"], c["args"]) for _, c in sorted(self.calls.items()))
