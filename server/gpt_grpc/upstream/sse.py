"""Server-sent events of a streamed chat completion: lines, events, and what the stream has said.

`iter_lines` splits a response body into lines (LF, CRLF or CR, like httpx's
`aiter_lines`) straight from its bytes, and counts them against the answer
bound. `events` parses each `data:` event with orjson and ends at `[DONE]`.
`StreamState` accumulates content, refusal, tool calls, usage, the finish
reason, the service tier, the system fingerprint and URL citations, and holds
the deltas not yet handed to the caller (each with the token logprobs that
came with it, as they arrive).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx2
import orjson

from ..chat import Delta, ToolCall, UrlCitation
from . import answers
from .failures import AnswerTooLarge, ErrorEvent, StreamCut

# After `[DONE]` only the end of the body is left (the chunked terminator).
# Reading it is what lets the pool keep the connection; leaving it unread
# closes the connection, and every stream costs a new one.
_MAX_LINES_AFTER_DONE = 16
_DRAIN_SECONDS = 0.5


async def iter_lines(response: httpx2.Response, limit: int) -> AsyncIterator[str]:
    """The body's lines without their ends; a final unterminated line too.

    Line ends are LF, CRLF or CR, as in httpx's `aiter_lines`; a CRLF cut
    between two chunks is one line end. Past `limit` bytes of body, raises
    AnswerTooLarge.
    """
    tail = b""
    after_cr = False
    total = 0
    async for chunk in response.aiter_bytes():
        total += len(chunk)
        if total > limit:
            raise AnswerTooLarge(limit)
        if after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF cut between two chunks
        after_cr = chunk.endswith(b"\r")
        text = tail + chunk if tail else chunk
        if b"\r" in text:
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = text.split(b"\n")
        tail = lines.pop()
        for line in lines:
            yield line.decode("utf-8", "replace")
    if tail:
        yield tail.decode("utf-8", "replace")


async def events(lines: AsyncIterator[str]) -> AsyncIterator[Mapping[str, Any]]:
    """Parsed JSON of each SSE `data:` event; ends at `[DONE]`.

    Raises StreamCut if the body ends without `[DONE]` (saying whether it held
    any event at all), ValueError on an event that is not a JSON object,
    ErrorEvent on an in-stream error object.
    """
    data: list[str] = []
    sse = False  # whether any `data:` line came: an HTML page or a JSON body has none
    async for line in lines:
        if line:
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
                sse = True
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
            raise ErrorEvent(event)
        yield event
    if data and "\n".join(data) == "[DONE]":
        return
    raise StreamCut(sse=sse)


async def _drain_after_done(lines: AsyncIterator[str]) -> None:
    """Read what follows `[DONE]`, briefly and boundedly; the answer is complete either way."""
    with contextlib.suppress(TimeoutError, httpx2.HTTPError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            count = 0
            async for _ in lines:
                count += 1
                if count >= _MAX_LINES_AFTER_DONE:
                    break


class StreamState:
    """What a stream has said so far (reset when a new attempt starts)."""

    def __init__(self) -> None:
        # The answer's X-Request-Id and status, once the upstream answered (errors carry them).
        self.request_id: str | None = None
        self.status: int | None = None
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
        self.service_tier = ""
        self.system_fingerprint = ""
        self.annotations: list[UrlCitation] = []
        self.done = False

    def feed(self, event: Mapping[str, Any]) -> None:
        self.model = self.model or str(event.get("model") or "")
        self.id = self.id or str(event.get("id") or "")
        # Both come with every chunk (OpenAI): read until known.
        if not self.service_tier:
            self.service_tier = answers.text(event.get("service_tier"))
        if not self.system_fingerprint:
            self.system_fingerprint = answers.text(event.get("system_fingerprint"))
        if event.get("usage"):
            self.usage = event["usage"]
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            refusal = delta.get("refusal") or ""
            logprobs = answers.logprobs(choice["logprobs"]) if choice.get("logprobs") else ()
            if text or refusal or logprobs:
                self.content.append(text)
                self.refusal.append(refusal)
                self.pending.append(Delta(text, refusal, logprobs))
            if delta.get("annotations"):
                self.annotations.extend(answers.citations(delta["annotations"]))
            for call in delta.get("tool_calls") or ():
                slot = self.calls.setdefault(int(call.get("index") or 0), {"id": "", "name": "", "args": ""})
                fn = call.get("function") or {}
                slot["id"] = slot["id"] or str(call.get("id") or "")
                slot["name"] += str(fn.get("name") or "")
                slot["args"] += str(fn.get("arguments") or "")
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])

    async def advance(self, stream: AsyncIterator[Mapping[str, Any]]) -> None:
        """Feed the next event; at the end, check the answer was complete.

        Reading on to `[DONE]` (past the usage chunk) lets the connection go
        back to the pool instead of being closed.
        """
        cut: StreamCut | None = None
        try:
            event = await anext(stream)
        except StopAsyncIteration:
            pass
        except StreamCut as exc:
            cut = exc
        else:
            self.feed(event)
            return
        # A stream cut before its finish_reason is an error; one that only
        # lacks the final `[DONE]` (some compatible servers) is complete.
        if self.finish_reason is None:
            raise cut or StreamCut()
        self.done = True

    def take(self) -> list[Delta]:
        out, self.pending = self.pending, []
        return out

    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(c["id"], c["name"], c["args"]) for _, c in sorted(self.calls.items()))
