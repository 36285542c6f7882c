"""Endpoints: what an HTTP request to one upstream looks like, built once per upstream.

An `Endpoint` holds everything that does not change between two calls to
one upstream - the URL, the header template with its credentials, and the
scrubber that removes its secrets (and every other key the gateway holds)
from what the upstream says - so that each call only copies the template
and adds its body, its length and its request id.

`openai_endpoint` builds the OpenAI kind (also what every OpenAI-compatible
server speaks): `POST <base_url>/chat/completions` with
`Authorization: Bearer <key>`, `OpenAI-Organization` and `OpenAI-Project`
when set, and the caller's request id as `X-Client-Request-Id`.
`azure_endpoint` builds the Azure OpenAI kind: one endpoint per deployment,
`POST <base_url>/openai/deployments/<deployment>/chat/completions?api-version=<v>`
with the key in an `api-key` header.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from urllib.parse import quote, urlsplit

import httpx2

from ..settings import Settings
from ..upstreams import UpstreamSpec
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

    def request(
        self, content: bytes, *, timeout: float, connect_timeout: float, client_request_id: str | None
    ) -> httpx2.Request:
        """The POST of one attempt; `timeout` bounds each read, write and the wait for a pooled connection."""
        headers = self.headers.copy()  # shares the entries: no per-call re-normalizing
        headers["Content-Length"] = str(len(content))
        if client_request_id:
            headers["X-Client-Request-Id"] = client_request_id
        request = httpx2.Request(
            "POST",
            self.url,
            content=content,
            extensions={"timeout": {"connect": connect_timeout, "read": timeout, "write": timeout, "pool": timeout}},
        )
        request.headers = headers
        return request


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
        ("Connection", "keep-alive"),
        ("Content-Type", "application/json"),
        ("User-Agent", USER_AGENT),
    ]


def _endpoint(
    kind: str, base_url: str, url: httpx2.URL, headers: list[tuple[str, str]], scrubber: Scrubber, upstream: str
) -> Endpoint:
    # Host (and a Content-Length that each request replaces) as httpx2 derives them from the URL.
    template = httpx2.Request("POST", url, headers=headers, content=b"").headers
    return Endpoint(
        kind=kind,
        name=urlsplit(base_url).hostname or "",
        url=url,
        headers=template,
        scrubber=scrubber,
        upstream=upstream,
    )
