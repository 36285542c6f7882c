"""Endpoints: what an HTTP request to one upstream looks like, built once per upstream.

An `Endpoint` holds everything that does not change between two calls to
one upstream - the URL, the header template with its credentials, and the
scrubber that removes its secrets (and every other key the gateway holds)
from what the upstream says - so that each call only copies the template
and adds its body, its length and its request id. For the gateway's own
pool, `prepared` goes further: the template's wire head is kept as bytes,
checked once, and a call joins its length and its own fields into it.

`openai_endpoint` builds the OpenAI kind (also what every OpenAI-compatible
server speaks): `POST <base_url>/chat/completions` with
`Authorization: Bearer <key>`, `OpenAI-Organization` and `OpenAI-Project`
when set, the caller's request id as `X-Client-Request-Id`, and the attempt's trace context
(`traceparent`, `tracestate`) when the gateway traces.
`azure_endpoint` builds the Azure OpenAI kind: one endpoint per deployment,
`POST <base_url>/openai/deployments/<deployment>/chat/completions?api-version=<v>`
with the key in an `api-key` header.

`chat_body` builds the JSON body every kind sends, once per call: a
message's parts become OpenAI's content-part objects (inline bytes as base64:
`image_url` data URLs, `input_audio`, `file` with a data URL), the model's
quirks are applied (`catalog.adapt_request`), and extra_body_json is merged
last (`chat.validate` has refused any key it may not set). A message whose
content is a string, and a request without extra_body_json, are passed on as
they are.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from urllib.parse import quote, urlsplit

import httpx2

from .. import media
from ..catalog import adapt_request
from ..chat import AudioPart, ChatRequest, FilePart, ImagePart, TextPart
from ..models import ModelRecord
from ..settings import Settings
from ..upstreams import UpstreamSpec
from .http1 import PREPARED, Prepared, check_fields, request_head
from .scrub import Scrubber

CHAT_PATH = "/chat/completions"
AZURE_CHAT_PATH = "/openai/deployments/{deployment}/chat/completions"
# The upstream of the OPENAI_BASE_URL + OPENAI_API_KEY shorthand, as responses and logs name it.
DEFAULT_UPSTREAM = "default"


def _user_agent() -> str:
    try:
        return f"gpt-grpc/{metadata.version('gpt-grpc')}"
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "gpt-grpc"


USER_AGENT = _user_agent()


@dataclass(frozen=True, eq=False, slots=True)
class Endpoint:
    """One upstream as an attempt sees it: where to send, with which headers, whose secrets to scrub."""

    kind: str  # "openai" or "azure"
    name: str  # the upstream's host: safe for logs, metrics and spans (never the key)
    url: httpx2.URL
    headers: httpx2.Headers  # every header but Content-Length and the per-call ones
    scrubber: Scrubber
    upstream: str = DEFAULT_UPSTREAM  # the configured upstream's name (responses, logs, metrics)
    # The wire head of `headers`, checked once (http1.Prepared): up to Content-Length's value, and after it.
    head_start: bytes = b""
    head_rest: bytes = b""

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
        # A given stream, not `content=`: httpx2 would derive Host and Content-Length headers
        # again (they are set above) and encode the body through its generic path.
        request = httpx2.Request(
            "POST",
            self.url,
            stream=httpx2.ByteStream(content),
            extensions={"timeout": _timeouts(timeout, connect_timeout)},
        )
        request.headers = headers
        request.read()  # a ByteStream: no I/O; the transport sends `request.content` in one write
        return request

    def prepared(
        self,
        content: bytes,
        *,
        timeout: float,
        connect_timeout: float,
        client_request_id: str | None,
        trace_headers: Sequence[tuple[str, str]] = (),
    ) -> httpx2.Request:
        """The same request as `request`, its head built here as bytes (http1.Prepared) for the own pool.

        The head is byte for byte the one the pool would build from `request(...)`; the
        Request itself carries no header fields, so it is for the own pool only (client.py).
        """
        try:
            fields = [(b"X-Client-Request-Id", client_request_id.encode("ascii"))] if client_request_id else []
            fields += [(name.encode("ascii"), value.encode("ascii")) for name, value in trace_headers]
        except UnicodeEncodeError:  # httpx2's own encoding rules decide: the generic path
            return self.request(
                content,
                timeout=timeout,
                connect_timeout=connect_timeout,
                client_request_id=client_request_id,
                trace_headers=trace_headers,
            )
        parts = [self.head_start, b"%d" % len(content), self.head_rest]
        if fields:
            check_fields(fields)
            for name, value in fields:
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        return httpx2.Request(
            "POST",
            self.url,
            stream=httpx2.ByteStream(content),
            extensions={
                "timeout": _timeouts(timeout, connect_timeout),
                PREPARED: Prepared(b"".join(parts), content, _CONNECTION),
            },
        )


# The Connection field every endpoint sends (_common_headers): the pool reads the response's framing by it.
_CONNECTION = "keep-alive"


def _timeouts(timeout: float, connect_timeout: float) -> dict[str, float]:
    return {"connect": connect_timeout, "read": timeout, "write": timeout, "pool": timeout}


def openai_endpoint(settings: Settings, scrubber: Scrubber) -> Endpoint:
    """The endpoint of the shorthand's OpenAI-compatible upstream, from a settings snapshot with a key."""
    if not settings.api_key:
        raise ValueError("an endpoint needs an API key")
    return _openai(
        settings.endpoint, settings.api_key, settings.organization, settings.project, scrubber, DEFAULT_UPSTREAM
    )


def upstream_endpoint(spec: UpstreamSpec, scrubber: Scrubber) -> Endpoint:
    """The endpoint of an upstream of kind "openai" from the upstream set."""
    return _openai(spec.base_url, spec.api_key, spec.organization, spec.project, scrubber, spec.name)


def _openai(
    base_url: str, api_key: str, organization: str | None, project: str | None, scrubber: Scrubber, upstream: str
) -> Endpoint:
    url = httpx2.URL(base_url.rstrip("/") + CHAT_PATH)
    headers = _common_headers()
    headers.append(("Authorization", f"Bearer {api_key}"))
    if organization:
        headers.append(("OpenAI-Organization", organization))
    if project:
        headers.append(("OpenAI-Project", project))
    return _endpoint("openai", base_url, url, headers, scrubber, upstream)


def azure_endpoint(spec: UpstreamSpec, deployment: str, scrubber: Scrubber) -> Endpoint:
    """The endpoint of one deployment of an Azure OpenAI upstream: its URL names the deployment and api-version."""
    if spec.kind != "azure" or not spec.api_version:
        raise ValueError("an Azure endpoint needs an azure upstream with an api_version")
    path = AZURE_CHAT_PATH.format(deployment=quote(deployment, safe=""))
    url = httpx2.URL(spec.base_url.rstrip("/") + path, params={"api-version": spec.api_version})
    headers = _common_headers()
    headers.append(("api-key", spec.api_key))
    return _endpoint("azure", spec.base_url, url, headers, scrubber, spec.name)


def _common_headers() -> list[tuple[str, str]]:
    return [
        ("Accept", "application/json"),
        ("Accept-Encoding", "gzip, deflate"),
        ("Connection", _CONNECTION),
        ("Content-Type", "application/json"),
        ("User-Agent", USER_AGENT),
    ]


def _endpoint(
    kind: str, base_url: str, url: httpx2.URL, headers: list[tuple[str, str]], scrubber: Scrubber, upstream: str
) -> Endpoint:
    # Host (and a Content-Length that each request replaces) as httpx2 derives them from the URL.
    template = httpx2.Request("POST", url, headers=headers, content=b"").headers
    head_start, head_rest = _head_parts(url, template)
    return Endpoint(
        kind=kind,
        name=urlsplit(base_url).hostname or "",
        url=url,
        headers=template,
        scrubber=scrubber,
        upstream=upstream,
        head_start=head_start,
        head_rest=head_rest,
    )


def _head_parts(url: httpx2.URL, template: httpx2.Headers) -> tuple[bytes, bytes]:
    """The template's wire head (its fields checked here, once), cut around Content-Length's value.

    (up to and including "Content-Length: ", from the CRLF after the value to the last field's CRLF)
    """
    probe = httpx2.Request("POST", url)
    probe.headers = template
    head = request_head(probe)
    marker = b"\r\nContent-Length: 0\r\n"
    at = head.index(marker)
    return head[: at + len(marker) - 3], head[at + len(marker) - 2 : -2]


# --------------------------------------------------------------------------- the body


def chat_body(request: ChatRequest, model: ModelRecord) -> dict[str, Any]:
    """The upstream body of a validated request (without the stream flags)."""
    body = request.body()
    for message in request.messages:
        if type(message.get("content")) is list:
            body["messages"] = [_with_parts(m) for m in request.messages]
            break
    body = adapt_request(body, model.spec, model.name)
    if request.extra:
        body.update(request.extra)
    return body


def _with_parts(message: Mapping[str, Any]) -> Mapping[str, Any]:
    content = message.get("content")
    if not isinstance(content, list):
        return message
    return {**message, "content": [_part(p) for p in content]}


def _part(part: object) -> object:
    """One content part as OpenAI's chat completions API takes it (an OpenAI-shaped dict passes as is)."""
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        image: dict[str, Any] = {"url": media.data_url(part.mime_type, part.data) if part.data else part.url}
        if part.detail is not None:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    if isinstance(part, AudioPart):
        encoded = base64.b64encode(part.data).decode("ascii")
        return {"type": "input_audio", "input_audio": {"data": encoded, "format": part.format}}
    if isinstance(part, FilePart):
        mime_type = part.mime_type or media.guess_mime_type(part.filename) or ""
        return {"type": "file", "file": {"filename": part.filename, "file_data": media.data_url(mime_type, part.data)}}
    return part
