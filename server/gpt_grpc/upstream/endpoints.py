"""The hot path to the upstream: the SDK's request, without the SDK's per-call work.

Going through `client.chat.completions.with_streaming_response.create(...)`
costs about 0.5 ms of CPU a call before a byte is sent (TypedDict transforms
of the body, option models copied twice, headers merged and validated, the
auth and provider hooks). None of that changes between two calls of one
settings snapshot, so `ChatEndpoint` asks the SDK client once for what it
sends (the URL, its auth, organization, project, user agent and
`X-Stainless-*` headers) and then builds each request directly on the shared
httpx2 client, the body serialized once with orjson.

Failures are the SDK's own: a timeout before the response raises
`openai.APITimeoutError`, a transport failure `openai.APIConnectionError`,
and a non-2xx response the SDK's `APIStatusError` subclass built by the SDK
client itself (`_make_status_error_from_response`), exactly as `create()`
raises them with `max_retries=0`, so `errors.from_openai` and the retry rules
see the same thing as before. tests/test_upstream.py checks that the wire
request (method, URL, headers, JSON body, timeouts) equals the SDK's.

`iter_lines` splits a response body into lines (LF, CRLF or CR, like
httpx's `aiter_lines`) straight from its bytes, skipping httpx's text and
line decoder layers.
"""

from __future__ import annotations

import ssl
import weakref
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import anyio
import httpx2
import openai
import orjson

CHAT_PATH = "chat/completions"
# The SDK marks a `with_streaming_response` request with this header, and it
# goes out on the wire; sent too, so the upstream sees the same request.
_RAW_RESPONSE_HEADER = ("X-Stainless-Raw-Response", "stream")
_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (httpx2.TimeoutException,)
# What the SDK turns into APIConnectionError (openai/_httpx2.py: request_exceptions).
_REQUEST_ERRORS: tuple[type[BaseException], ...] = (httpx2.RequestError, ssl.SSLError, anyio.EndOfStream)


class ChatEndpoint:
    """POST <base_url>/chat/completions as `client` would send it, on `http`."""

    def __init__(self, client: openai.AsyncOpenAI, http: httpx2.AsyncClient) -> None:
        self.client = client
        self.http = http
        self.url = httpx2.URL(str(client.base_url) + CHAT_PATH)
        self._template: httpx2.Headers | None = None

    def _base_headers(self) -> httpx2.Headers:
        """Every header but the per-call ones, merged with the HTTP client's as httpx2 does.

        Built on first use, inside the event loop: X-Stainless-Async names the
        running async library, as it does when the SDK builds a request. Each
        request copies it (the entries are shared, not re-normalized: ~5 KB less
        per call in flight than building the request from scratch).
        """
        if self._template is None:
            merged: dict[str, Any] = {**self.client.auth_headers, **self.client.default_headers}
            headers = [(k, v) for k, v in merged.items() if isinstance(v, str)]  # Omit() drops a header
            headers.append(_RAW_RESPONSE_HEADER)
            self._template = self.http.build_request("POST", self.url, headers=headers, content=b"").headers
        return self._template

    def post(
        self,
        body: Mapping[str, Any],
        *,
        timeout: float,
        connect_timeout: float,
        headers: Mapping[str, str] | None = None,
    ) -> _Post:
        """`async with endpoint.post(...) as response:` the streamed httpx2 response (2xx only)."""
        content = orjson.dumps(body)
        if len(content) < 4096:
            content = bytes(memoryview(content))  # orjson's buffer is 4 KB whatever the length
        request_headers = self._base_headers().copy()
        request_headers["Content-Length"] = str(len(content))
        if headers:
            for name, value in headers.items():
                request_headers[name] = value
        request_headers["x-stainless-retry-count"] = "0"
        request_headers["x-stainless-read-timeout"] = str(float(timeout))
        request = httpx2.Request(
            "POST",
            self.url,
            content=content,
            extensions={"timeout": httpx2.Timeout(timeout, connect=connect_timeout).as_dict()},
        )
        request.headers = request_headers
        cookies = self.http.cookies
        if cookies:  # what build_request adds: cookies the upstream set earlier
            httpx2.Cookies(cookies).set_cookie_header(request)
        return _Post(self, request)


class _Post:
    __slots__ = ("endpoint", "request", "response")

    def __init__(self, endpoint: ChatEndpoint, request: httpx2.Request) -> None:
        self.endpoint = endpoint
        self.request = request
        self.response: httpx2.Response | None = None

    async def __aenter__(self) -> httpx2.Response:
        request = self.request
        try:
            response = await self.endpoint.http.send(request, stream=True)
        except _TIMEOUT_ERRORS as err:
            raise openai.APITimeoutError(request=request) from err
        except openai.OpenAIError:
            raise
        except _REQUEST_ERRORS as err:
            raise openai.APIConnectionError(request=request) from err
        if not response.is_success:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise self.endpoint.client._make_status_error_from_response(response) from None
        self.response = response
        return response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.response is not None:
            await self.response.aclose()


_endpoints: weakref.WeakKeyDictionary[openai.AsyncOpenAI, ChatEndpoint] = weakref.WeakKeyDictionary()


def chat_endpoint(client: openai.AsyncOpenAI, http: httpx2.AsyncClient) -> ChatEndpoint:
    """The endpoint of an SDK client, built once per client (one per settings snapshot)."""
    endpoint = _endpoints.get(client)
    if endpoint is None or endpoint.http is not http:
        endpoint = ChatEndpoint(client, http)
        _endpoints[client] = endpoint
    return endpoint


async def iter_lines(response: httpx2.Response) -> AsyncIterator[str]:
    """The body's lines without their ends; a final unterminated line too.

    Line ends are LF, CRLF or CR, as in httpx's `aiter_lines`; a CRLF cut
    between two chunks is one line end.
    """
    tail = b""
    after_cr = False
    async for chunk in response.aiter_bytes():
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
