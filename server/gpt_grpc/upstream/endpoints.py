"""Endpoints: what an HTTP request to one upstream looks like, built once per upstream.

An `Endpoint` holds everything that does not change between two calls to
one upstream - the URL, the header template with its credentials, and the
scrubber that removes its secrets (and every other key the gateway holds)
from what the upstream says - so that each call only copies the template
and adds its body, its length and its request id.

`openai_endpoint` builds the OpenAI kind (also what every OpenAI-compatible
server speaks): `POST <base_url>/chat/completions` with
`Authorization: Bearer <key>`, `OpenAI-Organization` and `OpenAI-Project`
when set, the caller's request id as `X-Client-Request-Id`, and the attempt's trace context
(`traceparent`, `tracestate`) when the gateway traces. Another kind
(Azure OpenAI: a deployment URL with `api-version`, an `api-key` header) is
another function returning an `Endpoint`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from urllib.parse import urlsplit

import httpx2

from ..settings import Settings
from .scrub import Scrubber

CHAT_PATH = "/chat/completions"


def _user_agent() -> str:
    try:
        return f"gpt-grpc/{metadata.version('gpt-grpc')}"
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "gpt-grpc"


USER_AGENT = _user_agent()


@dataclass(frozen=True, eq=False, slots=True)
class Endpoint:
    """One upstream as an attempt sees it: where to send, with which headers, whose secrets to scrub."""

    kind: str  # "openai"
    name: str  # the upstream's host: safe for logs, metrics and spans (never the key)
    url: httpx2.URL
    headers: httpx2.Headers  # every header but Content-Length and the per-call ones
    scrubber: Scrubber

    def request(
        self,
        content: bytes,
        *,
        timeout: float,
        connect_timeout: float,
        client_request_id: str | None,
        trace_headers: Sequence[tuple[str, str]] = (),
    ) -> httpx2.Request:
        """The POST of one attempt; `timeout` bounds each read, write and the wait for a pooled connection.

        `trace_headers`: the attempt's trace context (W3C `traceparent`, `tracestate`) when traced.
        """
        headers = self.headers.copy()  # shares the entries: no per-call re-normalizing
        headers["Content-Length"] = str(len(content))
        if client_request_id:
            headers["X-Client-Request-Id"] = client_request_id
        for name, value in trace_headers:
            headers[name] = value
        request = httpx2.Request(
            "POST",
            self.url,
            content=content,
            extensions={"timeout": {"connect": connect_timeout, "read": timeout, "write": timeout, "pool": timeout}},
        )
        request.headers = headers
        return request


def openai_endpoint(settings: Settings, scrubber: Scrubber) -> Endpoint:
    """The endpoint of an OpenAI-compatible upstream from a settings snapshot with a key."""
    if not settings.api_key:
        raise ValueError("an endpoint needs an API key")
    url = httpx2.URL(settings.endpoint.rstrip("/") + CHAT_PATH)
    headers = [
        ("Accept", "application/json"),
        ("Accept-Encoding", "gzip, deflate"),
        ("Connection", "keep-alive"),
        ("Content-Type", "application/json"),
        ("User-Agent", USER_AGENT),
        ("Authorization", f"Bearer {settings.api_key}"),
    ]
    if settings.organization:
        headers.append(("OpenAI-Organization", settings.organization))
    if settings.project:
        headers.append(("OpenAI-Project", settings.project))
    # Host (and a Content-Length that each request replaces) as httpx2 derives them from the URL.
    template = httpx2.Request("POST", url, headers=headers, content=b"").headers
    return Endpoint(
        kind="openai",
        name=urlsplit(settings.endpoint).hostname or "",
        url=url,
        headers=template,
        scrubber=scrubber,
    )
