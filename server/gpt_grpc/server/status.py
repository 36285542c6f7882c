"""Domain failures -> gRPC status with google.rpc details. The table is data.

Each error carries exactly one ErrorInfo (domain "gpt-grpc", reason = the
proto ErrorReason name); RetryInfo when retrying later makes sense;
BadRequest when fields are invalid.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import GatewayError, Reason

DOMAIN = "gpt-grpc"

REASON_CODES: Mapping[Reason, grpc.StatusCode] = {
    Reason.INVALID_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.API_KEY_MISSING: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.ADMIN_TOKEN_MISSING: grpc.StatusCode.UNAUTHENTICATED,
    Reason.ADMIN_TOKEN_INVALID: grpc.StatusCode.UNAUTHENTICATED,
    Reason.ADMIN_DISABLED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.UPSTREAM_BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.UPSTREAM_CONTEXT_LENGTH_EXCEEDED: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.UPSTREAM_AUTHENTICATION_FAILED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.UPSTREAM_PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.UPSTREAM_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.UPSTREAM_RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.UPSTREAM_QUOTA_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.UPSTREAM_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.UPSTREAM_RESPONSE_INVALID: grpc.StatusCode.UNAVAILABLE,
    Reason.UPSTREAM_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.UPSTREAM_CONFLICT: grpc.StatusCode.ABORTED,
    Reason.SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
    Reason.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.INTERNAL_ERROR: grpc.StatusCode.INTERNAL,
    Reason.CLIENT_TOKEN_MISSING: grpc.StatusCode.UNAUTHENTICATED,
    Reason.CLIENT_TOKEN_INVALID: grpc.StatusCode.UNAUTHENTICATED,
    Reason.CLIENT_RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.CLIENT_BUDGET_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.AUTH_RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.CLIENT_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.CLIENT_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    Reason.CLIENT_FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    Reason.CLIENT_MODEL_UNPRICED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.SECRET_KEY_MISSING: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.CLIENT_IN_FLIGHT_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.STORE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.MODEL_NOT_ROUTED: grpc.StatusCode.NOT_FOUND,
    Reason.CONVERSATION_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.CONVERSATION_BUSY: grpc.StatusCode.ABORTED,
    Reason.CONVERSATION_FULL: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.CONVERSATION_CONTEXT_EXCEEDED: grpc.StatusCode.INVALID_ARGUMENT,
}

# Where the caller may try again later; the delay when the upstream gave none.
RETRY_LATER: Mapping[Reason, float] = {
    Reason.UPSTREAM_RATE_LIMITED: 1.0,
    Reason.UPSTREAM_UNAVAILABLE: 1.0,
    Reason.UPSTREAM_RESPONSE_INVALID: 1.0,
    Reason.UPSTREAM_TIMEOUT: 1.0,
    Reason.UPSTREAM_CONFLICT: 1.0,
    Reason.SHUTTING_DOWN: 1.0,
    Reason.OVERLOADED: 0.5,
    Reason.CLIENT_RATE_LIMITED: 1.0,
    Reason.CLIENT_IN_FLIGHT_LIMITED: 1.0,
    Reason.STORE_UNAVAILABLE: 1.0,
    # Another turn of the conversation is running: it ends within a call's time.
    Reason.CONVERSATION_BUSY: 1.0,
    Reason.AUTH_RATE_LIMITED: 60.0,
}


# The status travels in trailers, and trailers past the caller's metadata limit
# (gRPC's default: 8 KiB soft, 16 KiB hard) reach it as RESOURCE_EXHAUSTED with
# no details at all. A request with thousands of bad fields must still be told
# INVALID_ARGUMENT: list the first violations and bound the message.
MAX_FIELD_VIOLATIONS = 20
MAX_MESSAGE_CHARS = 1024
# The attempts of a call over several upstreams: one ErrorInfo entry per upstream
# ("upstream.<name>"), each at most this long (attempts are at most 10, names 64 characters).
MAX_ATTEMPTS_ENTRY_CHARS = 512


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _attempts_by_upstream(attempts: tuple[tuple[str, str, str], ...]) -> dict[str, str]:
    """{"upstream.<name>": "<model> <outcome>, ..."} in the order the upstreams were first tried."""
    out: dict[str, list[str]] = {}
    for upstream, model, outcome in attempts:
        out.setdefault(f"upstream.{upstream}", []).append(f"{model} {outcome}" if model else outcome)
    return {key: ", ".join(entries)[:MAX_ATTEMPTS_ENTRY_CHARS] for key, entries in out.items()}


def to_status(err: GatewayError) -> grpc.Status:
    """The grpc.Status (code, message, details trailer) for a domain error."""
    code = REASON_CODES[err.reason]
    metadata: dict[str, str] = {}
    if err.http_status is not None:
        metadata["http_status"] = str(err.http_status)
    if err.request_id:
        metadata["request_id"] = err.request_id
    if err.upstream_code:
        metadata["upstream_code"] = err.upstream_code[:128]
    if err.attempts:
        metadata["attempts"] = str(err.attempts)
    if err.retry_budget_exhausted:
        metadata["retry_budget_exhausted"] = "true"
    if err.upstream:
        metadata["upstream"] = err.upstream
    metadata.update(_attempts_by_upstream(err.upstream_attempts))
    details = [_pack(error_details_pb2.ErrorInfo(reason=err.reason.value, domain=DOMAIN, metadata=metadata))]
    if err.reason in RETRY_LATER and not err.final:
        delay = err.retry_after if err.retry_after is not None else RETRY_LATER[err.reason]
        retry_delay = duration_pb2.Duration()
        retry_delay.FromNanoseconds(int(delay * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=retry_delay)))
    if err.field_violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in err.field_violations[:MAX_FIELD_VIOLATIONS]
            ]
        )
        details.append(_pack(bad))
    if err.quota_violations:
        quota = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(subject=subject, description=description)
                for subject, description in err.quota_violations
            ]
        )
        details.append(_pack(quota))
    message = err.message if len(err.message) <= MAX_MESSAGE_CHARS else err.message[:MAX_MESSAGE_CHARS] + "..."
    if len(err.field_violations) > MAX_FIELD_VIOLATIONS:
        message += f" ({len(err.field_violations)} invalid fields, the first {MAX_FIELD_VIOLATIONS} listed)"
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    return rpc_status.to_status(status)
