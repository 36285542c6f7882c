"""Upstream settings: one immutable snapshot, validated as a whole.

A call reads the snapshot once when it starts, so a concurrent Configure
never mixes the endpoint of one snapshot with the key of another.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .egress import EgressPolicy, endpoint_problem, origin
from .errors import FieldViolation, invalid
from .retry import RetryPolicy

if TYPE_CHECKING:  # upstreams.py builds on the checks below
    from .upstreams import UpstreamSet

OPENAI_ENDPOINT = "https://api.openai.com/v1"
OPENAI_HOSTS = frozenset({"api.openai.com"})
DEFAULT_MODEL = "gpt-4o-mini"

MAX_URL_LENGTH = 2048
MAX_TOKEN_LENGTH = 4096
MAX_ID_LENGTH = 256
# OpenAI keys: "sk-", then an optional kind ("proj-", "svcacct-", "admin-")
# and a long run of url-safe characters.
_OPENAI_KEY = re.compile(r"sk-[A-Za-z0-9_\-]{16,}")
KEY_MUST_FOLLOW = (
    "must be given with an endpoint on another host (scheme, host or port): "
    "the key in force is never sent to a new host"
)
# Header-safe token: visible ASCII only (no spaces, no control characters).
_TOKEN = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True)
class Settings:
    """Everything a call needs to reach the upstream."""

    api_key: str | None = None
    endpoint: str = OPENAI_ENDPOINT
    organization: str | None = None
    project: str | None = None
    default_model: str = DEFAULT_MODEL
    request_timeout: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    generation: int = 0
    # Several upstreams (upstreams.py); None: the one upstream of api_key + endpoint (the shorthand).
    upstreams: UpstreamSet | None = None

    def __repr__(self) -> str:  # never show the key
        return (
            f"Settings(api_key={mask_key(self.api_key)!r}, endpoint={self.endpoint!r}, "
            f"default_model={self.default_model!r}, generation={self.generation}, upstreams={self.upstreams!r})"
        )


@dataclass(frozen=True)
class SettingsUpdate:
    """A partial change: None leaves a field as it is ("" clears organization/project)."""

    api_key: str | None = None
    endpoint: str | None = None
    organization: str | None = None
    project: str | None = None
    default_model: str | None = None
    request_timeout: float | None = None
    max_attempts: int | None = None
    initial_backoff: float | None = None
    max_backoff: float | None = None
    # A whole new upstream set (validated by upstreams.parse; keys checked here), or back to the shorthand.
    upstreams: UpstreamSet | None = None
    clear_upstreams: bool = False

    def __repr__(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["clear_upstreams"] = self.clear_upstreams or None
        fields["api_key"] = mask_key(self.api_key)
        shown = ", ".join(f"{k}={v!r}" for k, v in fields.items() if v is not None)
        return f"SettingsUpdate({shown})"


def plain_fields(s: Settings) -> dict[str, Any]:
    """The settings an operator chose, keys and the upstream set aside, as JSON: what the state
    file (state.py) and the shared store's record (settings_sync.py) both keep, in one shape."""
    return {
        "endpoint": s.endpoint,
        "organization": s.organization,
        "project": s.project,
        "default_model": s.default_model,
        "request_timeout": s.request_timeout,
        "retry": {
            "max_attempts": s.retry.max_attempts,
            "initial_backoff": s.retry.initial_backoff,
            "max_backoff": s.retry.max_backoff,
        },
    }


def mask_key(key: str | None) -> str:
    """'sk-...wxyz': enough to tell keys apart, never enough to use one."""
    if not key:
        return ""
    prefix = "sk-" if key.startswith("sk-") else ""
    tail = key[-4:] if len(key) >= 12 else ""
    return f"{prefix}...{tail}"


def is_openai_endpoint(endpoint: str) -> bool:
    return (urlsplit(endpoint).hostname or "").lower() in OPENAI_HOSTS


def check_endpoint(url: str) -> str | None:
    """Why `url` is not an acceptable upstream base URL, or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"must be at most {MAX_URL_LENGTH} characters"
    if not url.isprintable() or any(c.isspace() for c in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a malformed port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if not parts.hostname:
        return "must have a host"
    if parts.username is not None or parts.password is not None:
        return "must not embed credentials; set api_key instead"
    if parts.query or parts.fragment:
        return "must not have a query or fragment"
    if port == 0:
        return "must not use port 0"
    return None


def check_api_key(key: str, endpoint: str) -> str | None:
    """Why `key` is not acceptable for `endpoint`, or None."""
    if not key:
        return "must not be empty"
    if len(key) > MAX_TOKEN_LENGTH:
        return f"must be at most {MAX_TOKEN_LENGTH} characters"
    if not _TOKEN.fullmatch(key):
        return "must be printable ASCII without spaces or newlines"
    if is_openai_endpoint(endpoint) and not _OPENAI_KEY.fullmatch(key):
        return "does not look like an OpenAI key (sk-...)"
    return None


def _check_id(value: str, *, allow_empty: bool) -> str | None:
    if not value:
        return None if allow_empty else "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"must be at most {MAX_ID_LENGTH} characters"
    if not _TOKEN.fullmatch(value):
        return "must be printable ASCII without spaces"
    return None


def _finite_between(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low < value <= high


def apply(current: Settings, update: SettingsUpdate, policy: EgressPolicy | None = None) -> Settings:
    """The settings after `update`, all checked first; raises GatewayError(INVALID_REQUEST).

    Every violation is reported at once, and nothing is applied unless all pass.
    With the operator's `policy` (the server; the library passes none) the
    resulting endpoint must pass it, and an endpoint moved to another origin
    needs an api_key in the same update: the key in force never follows it.
    """
    violations: list[FieldViolation] = []

    def bad(field: str, why: str | None) -> None:
        if why:
            violations.append(FieldViolation(field, why))

    endpoint = current.endpoint if update.endpoint is None else update.endpoint.rstrip("/")
    if update.endpoint is not None:
        bad("endpoint", check_endpoint(update.endpoint))
    api_key = current.api_key if update.api_key is None else update.api_key
    endpoint_ok = update.endpoint is None or check_endpoint(update.endpoint) is None
    if api_key is not None and endpoint_ok and (update.api_key is not None or update.endpoint is not None):
        bad("api_key", check_api_key(api_key, endpoint))
    if policy is not None and endpoint_ok:
        bad("endpoint", endpoint_problem(endpoint, policy))
        if current.api_key is not None and update.api_key is None and origin(endpoint) != origin(current.endpoint):
            bad("api_key", KEY_MUST_FOLLOW)
    if update.organization is not None:
        bad("organization", _check_id(update.organization, allow_empty=True))
    if update.project is not None:
        bad("project", _check_id(update.project, allow_empty=True))
    if update.default_model is not None:
        bad("default_model", _check_id(update.default_model, allow_empty=False))
    if update.request_timeout is not None and not _finite_between(update.request_timeout, 0.0, 3600.0):
        bad("request_timeout", "must be more than 0 and at most 3600 seconds")

    retry = current.retry
    max_attempts = retry.max_attempts if update.max_attempts is None else update.max_attempts
    initial = retry.initial_backoff if update.initial_backoff is None else update.initial_backoff
    maximum = retry.max_backoff if update.max_backoff is None else update.max_backoff
    if update.max_attempts is not None and not 1 <= update.max_attempts <= 10:
        bad("retry_policy.max_attempts", "must be between 1 and 10")
    if update.initial_backoff is not None and not _finite_between(update.initial_backoff, 0.0, 60.0):
        bad("retry_policy.initial_backoff", "must be more than 0 and at most 60 seconds")
    if update.max_backoff is not None and not _finite_between(update.max_backoff, 0.0, 300.0):
        bad("retry_policy.max_backoff", "must be more than 0 and at most 300 seconds")
    elif math.isfinite(initial) and math.isfinite(maximum) and maximum < initial:
        bad("retry_policy.max_backoff", "must not be less than initial_backoff")

    upstreams = None if update.clear_upstreams else current.upstreams
    if update.upstreams is not None:
        if update.clear_upstreams:
            bad("clear_upstreams", "give either upstreams or clear_upstreams, not both")
        upstreams, problems = update.upstreams.checked(policy, current.upstreams)
        violations.extend(problems)

    if violations:
        raise invalid(violations)
    return Settings(
        api_key=api_key,
        endpoint=endpoint,
        organization=(current.organization if update.organization is None else update.organization or None),
        project=current.project if update.project is None else update.project or None,
        default_model=current.default_model if update.default_model is None else update.default_model,
        request_timeout=(current.request_timeout if update.request_timeout is None else update.request_timeout),
        retry=RetryPolicy(max_attempts=max_attempts, initial_backoff=initial, max_backoff=maximum),
        generation=current.generation + 1,
        upstreams=upstreams,
    )
