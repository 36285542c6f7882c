"""The gateway's failures as data: one exception type, one reason per cause.

The domain knows nothing of gRPC. Each failure carries a `Reason` (the names
of the proto's `ErrorReason` enum, checked by a test) and whatever the caller
needs to act on it: the upstream HTTP status and request id, a retry delay,
field violations. `server/status.py` turns a reason into a gRPC code.
"""

from __future__ import annotations

import datetime
import email.utils
import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class Reason(enum.StrEnum):
    """Why a call failed. Values equal the proto `ErrorReason` names."""

    INVALID_REQUEST = "INVALID_REQUEST"
    API_KEY_MISSING = "API_KEY_MISSING"
    ADMIN_TOKEN_MISSING = "ADMIN_TOKEN_MISSING"
    ADMIN_TOKEN_INVALID = "ADMIN_TOKEN_INVALID"
    ADMIN_DISABLED = "ADMIN_DISABLED"
    UPSTREAM_BAD_REQUEST = "UPSTREAM_BAD_REQUEST"
    UPSTREAM_CONTEXT_LENGTH_EXCEEDED = "UPSTREAM_CONTEXT_LENGTH_EXCEEDED"
    UPSTREAM_AUTHENTICATION_FAILED = "UPSTREAM_AUTHENTICATION_FAILED"
    UPSTREAM_PERMISSION_DENIED = "UPSTREAM_PERMISSION_DENIED"
    UPSTREAM_NOT_FOUND = "UPSTREAM_NOT_FOUND"
    UPSTREAM_RATE_LIMITED = "UPSTREAM_RATE_LIMITED"
    UPSTREAM_QUOTA_EXCEEDED = "UPSTREAM_QUOTA_EXCEEDED"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UPSTREAM_RESPONSE_INVALID = "UPSTREAM_RESPONSE_INVALID"
    UPSTREAM_TIMEOUT = "UPSTREAM_TIMEOUT"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    UPSTREAM_CONFLICT = "UPSTREAM_CONFLICT"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    OVERLOADED = "OVERLOADED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    CLIENT_TOKEN_MISSING = "CLIENT_TOKEN_MISSING"
    CLIENT_TOKEN_INVALID = "CLIENT_TOKEN_INVALID"
    CLIENT_RATE_LIMITED = "CLIENT_RATE_LIMITED"
    CLIENT_BUDGET_EXCEEDED = "CLIENT_BUDGET_EXCEEDED"
    AUTH_RATE_LIMITED = "AUTH_RATE_LIMITED"
    CLIENT_NOT_FOUND = "CLIENT_NOT_FOUND"
    CLIENT_EXISTS = "CLIENT_EXISTS"
    CLIENT_FORBIDDEN = "CLIENT_FORBIDDEN"
    CLIENT_MODEL_UNPRICED = "CLIENT_MODEL_UNPRICED"
    SECRET_KEY_MISSING = "SECRET_KEY_MISSING"
    CLIENT_IN_FLIGHT_LIMITED = "CLIENT_IN_FLIGHT_LIMITED"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    MODEL_NOT_ROUTED = "MODEL_NOT_ROUTED"
    CONVERSATION_NOT_FOUND = "CONVERSATION_NOT_FOUND"
    CONVERSATION_BUSY = "CONVERSATION_BUSY"
    CONVERSATION_FULL = "CONVERSATION_FULL"
    CONVERSATION_CONTEXT_EXCEEDED = "CONVERSATION_CONTEXT_EXCEEDED"


# Upstream failures worth another attempt. Everything else is final.
RETRYABLE: frozenset[Reason] = frozenset(
    {
        Reason.UPSTREAM_RATE_LIMITED,
        Reason.UPSTREAM_UNAVAILABLE,
        Reason.UPSTREAM_RESPONSE_INVALID,
        Reason.UPSTREAM_TIMEOUT,
        Reason.UPSTREAM_CONFLICT,
    }
)

# HTTP status of an upstream error response -> reason. 5xx and unlisted 4xx
# are handled in `reason_for_http`.
_HTTP_REASONS: Mapping[int, Reason] = {
    400: Reason.UPSTREAM_BAD_REQUEST,
    401: Reason.UPSTREAM_AUTHENTICATION_FAILED,
    403: Reason.UPSTREAM_PERMISSION_DENIED,
    404: Reason.UPSTREAM_NOT_FOUND,
    408: Reason.UPSTREAM_TIMEOUT,
    409: Reason.UPSTREAM_CONFLICT,
    422: Reason.UPSTREAM_BAD_REQUEST,
    429: Reason.UPSTREAM_RATE_LIMITED,
}

# OpenAI error codes (body "error.code" or "error.type") that refine the HTTP status.
_CODE_REASONS: Mapping[str, Reason] = {
    "insufficient_quota": Reason.UPSTREAM_QUOTA_EXCEEDED,
    "context_length_exceeded": Reason.UPSTREAM_CONTEXT_LENGTH_EXCEEDED,
    "string_above_max_length": Reason.UPSTREAM_CONTEXT_LENGTH_EXCEEDED,
    "model_not_found": Reason.UPSTREAM_NOT_FOUND,
    "invalid_api_key": Reason.UPSTREAM_AUTHENTICATION_FAILED,
}


def reason_for_http(status: int, code: str | None = None) -> Reason:
    """Map an upstream HTTP error status (and OpenAI error code) to a reason."""
    if code is not None and code in _CODE_REASONS:
        return _CODE_REASONS[code]
    if status >= 500:
        return Reason.UPSTREAM_UNAVAILABLE
    return _HTTP_REASONS.get(status, Reason.UPSTREAM_BAD_REQUEST)


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field (dotted path) and why."""

    field: str
    description: str


class GatewayError(Exception):
    """Any failure the gateway reports to its caller."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        *,
        http_status: int | None = None,
        request_id: str | None = None,
        upstream_code: str | None = None,
        retry_after: float | None = None,
        field_violations: Sequence[FieldViolation] = (),
        attempts: int = 0,
        quota_violations: Sequence[tuple[str, str]] = (),
        final: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.http_status = http_status
        self.request_id = request_id
        self.upstream_code = upstream_code
        self.retry_after = retry_after
        self.field_violations = tuple(field_violations)
        self.attempts = attempts
        # (subject, description) pairs for a google.rpc.QuotaFailure.
        self.quota_violations = tuple(quota_violations)
        # Set when the server-wide retry budget refused another attempt.
        self.retry_budget_exhausted = False
        # Retrying would give the same answer (an oversized one, say): neither the
        # gateway nor, through RetryInfo, the caller is told to try again.
        self.final = final
        # The configured upstream that answered so (several upstreams), and every attempt of
        # the call as (upstream, model, outcome) when it ended with no upstream left.
        self.upstream: str | None = None
        self.upstream_attempts: tuple[tuple[str, str, str], ...] = ()

    @property
    def retryable(self) -> bool:
        return self.reason in RETRYABLE and not self.final

    def __repr__(self) -> str:
        return f"GatewayError({self.reason.value}, {self.message!r}, http_status={self.http_status})"


def invalid(violations: Sequence[FieldViolation]) -> GatewayError:
    """An INVALID_REQUEST error listing every bad field at once."""
    summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
    return GatewayError(Reason.INVALID_REQUEST, f"invalid request: {summary}", field_violations=violations)


# Retry-After values beyond this are not honoured as-is: a broken or hostile
# upstream must not park calls for hours.
MAX_RETRY_AFTER_SECONDS = 60.0


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` as seconds or an HTTP-date; capped.

    RFC 9110 section 10.2.3 allows `Retry-After` to be delay-seconds or an
    HTTP-date (any of the three forms of section 5.6.7); a date is counted
    from `now` (seconds since the epoch, the current time when None), and one
    already past means "now" (0). Anything unreadable falls back to backoff.
    """
    raw_ms = headers.get("retry-after-ms")
    seconds: float | None = None
    if raw_ms:
        try:
            seconds = float(raw_ms) / 1000.0
        except ValueError:
            seconds = None
    if seconds is None:
        raw = headers.get("retry-after")
        if raw:
            try:
                seconds = float(raw)
            except ValueError:
                seconds = _seconds_until(raw, time.time() if now is None else now)
    if seconds is None or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_SECONDS)


def _seconds_until(http_date: str, now: float) -> float | None:
    """Seconds from `now` until an HTTP-date (at least 0), or None if it is not one."""
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # the asctime form names no zone: HTTP-dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now)
