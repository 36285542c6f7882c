"""The original module's interface, synchronous, over the async engine.

`GPT` keeps the seed's API: `api_key` and `endpoint` properties validated as
they are set, `chat_completion(...) -> str`, `count_tokens(text, model)`,
`context_assistant(prompt) -> str` and `close()`. The synchronous calls run on an event loop of their own, on a
daemon thread started on first use. The engine's async calls (`acomplete`,
`astream`) and its settings are available on the same object for library
users who have an event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from . import conversations as rules
from . import tokens
from .catalog import Catalog
from .chat import ChatRequest, ChatResult, Delta, check_model
from .conversations import Budget, Counted
from .engine import Engine, PreparedCall
from .errors import GatewayError
from .models import Models
from .pricing import Pricing
from .retry import AttemptObserver, RetryBudget
from .settings import DEFAULT_MODEL, Settings, SettingsUpdate, mask_key
from .upstream.client import DEFAULT_MAX_CONNECTIONS, UpstreamClient
from .usage import UsageTracker

T = TypeVar("T")


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
        self.engine = Engine(
            settings,
            models=Models(catalog, pricing),
            usage=usage,
            budget=budget,
            observer=observer,
            client=UpstreamClient(max_connections),
            sleep=sleep,
            clock=clock,
        )
        self._sync: _LoopThread | None = None
        self._lock = threading.Lock()
        #: The context assistant's system message, sent first in every turn.
        self.context_system_message = ""
        #: Cap on the context assistant's prompt plus its answer's reservation (None: the model's window).
        self.context_max_tokens: int | None = None
        self._context: list[Counted] = []  # counted for _context_model
        self._context_model = ""
        self._context_lock = threading.Lock()
        if endpoint is not None:
            self.endpoint = endpoint
        if api_key is not None:
            self.api_key = api_key

    # -- the original module's interface -------------------------------------

    @property
    def api_key(self) -> str | None:
        return self.engine.settings.api_key

    @api_key.setter
    def api_key(self, key: str) -> None:
        self._configure_or_value_error(SettingsUpdate(api_key=key))

    @property
    def endpoint(self) -> str:
        return self.engine.settings.endpoint

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
        request = ChatRequest.from_pair(model, system_message, user_message, params)
        return self._run_sync(self.engine.acomplete(request)).content

    def context_assistant(self, prompt: str) -> str:
        """Answer `prompt` in the conversation this object keeps (with the default model).

        The earlier prompts and answers go along, as many as fit the model's
        context window (or `context_max_tokens`): the oldest turns are left out
        and forgotten first, by the rules of the gateway's own conversations
        (conversations.py), counted with the model's encoding;
        `context_system_message` is always sent. A turn is kept only when its
        answer arrived; `reset_context()` forgets them all.
        """
        with self._context_lock:  # one turn at a time: a turn reads what the one before it kept
            return self._run_sync(self._context_turn(prompt))

    def reset_context(self) -> None:
        """Forget the context assistant's conversation."""
        with self._context_lock:
            self._context = []

    async def _context_turn(self, prompt: str) -> str:
        name = self.engine.model_name("")
        model = self.engine.models.resolve(name, priced=False)
        if name != self._context_model:  # counted with another model's encoding: count again
            self._context = [rules.count_message(c.message, model) for c in self._context]
            self._context_model = name
        new = [rules.count_message({"role": "user", "content": prompt}, model)]
        system = rules.system_messages(self.context_system_message, "")
        keep_from = 0
        window = model.spec.context_window if model.spec is not None else None
        limit = rules.context_limit(self.context_max_tokens, window)
        if limit is not None:
            fixed = rules.reply_priming(model) + sum(rules.count_message(m, model).tokens for m in system)
            keep_from = rules.plan(self._context, new, Budget(limit, rules.default_reserve(limit), fixed)).keep_from
        kept = self._context[keep_from:]
        messages = [*system, *(dict(c.message) for c in kept), dict(new[0].message)]
        result = await self.engine.acomplete(ChatRequest(name, messages))
        answer = result.content or result.refusal
        if answer:
            self._context = [*kept, *new, rules.count_message({"role": "assistant", "content": answer}, model)]
        return result.content

    def count_tokens(self, text: str, model: str = DEFAULT_MODEL) -> int:
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
        elif self.engine.client.started:
            raise RuntimeError("call `await gpt.aclose()` from the event loop that used it")

    def __repr__(self) -> str:
        s = self.engine.settings
        return f"GPT(api_key={mask_key(s.api_key)!r}, endpoint={s.endpoint!r})"

    def _configure_or_value_error(self, update: SettingsUpdate) -> None:
        try:
            self.engine.configure(update)
        except GatewayError as exc:
            raise ValueError(exc.message) from exc

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

    # -- the engine, for callers with an event loop -------------------------------

    @property
    def settings(self) -> Settings:
        return self.engine.settings

    @property
    def usage(self) -> UsageTracker:
        return self.engine.usage

    def configure(self, update: SettingsUpdate) -> Settings:
        """Validate `update` whole, then apply it to later calls; raises GatewayError."""
        return self.engine.configure(update)

    async def acomplete(self, request: ChatRequest | PreparedCall, *, deadline: float | None = None) -> ChatResult:
        """One whole answer (see `Engine.acomplete`)."""
        return await self.engine.acomplete(request, deadline=deadline)

    def astream(
        self, request: ChatRequest | PreparedCall, *, deadline: float | None = None
    ) -> AsyncIterator[Delta | ChatResult]:
        """Deltas, then one ChatResult (see `Engine.astream`)."""
        return self.engine.astream(request, deadline=deadline)

    async def aclose(self) -> None:
        await self.engine.aclose()
