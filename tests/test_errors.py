"""The error tables: HTTP -> reason -> gRPC code, and reasons == proto enum."""

from __future__ import annotations

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from gpt_grpc.errors import Reason, parse_retry_after, reason_for_http
from gpt_grpc.server.status import REASON_CODES
from gpt_grpc.upstream.failures import from_http
from gpt_grpc.upstream.scrub import NO_SECRETS


def test_reasons_match_the_proto_enum() -> None:
    proto = {v.name for v in pb.ErrorReason.DESCRIPTOR.values if v.number != 0}
    assert {r.value for r in Reason} == proto


def test_every_reason_has_a_status_code() -> None:
    assert set(REASON_CODES) == set(Reason)
    assert grpc.StatusCode.UNKNOWN not in REASON_CODES.values()


@pytest.mark.parametrize(
    ("status", "code", "reason", "grpc_code"),
    [
        (400, None, Reason.UPSTREAM_BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT),
        (422, None, Reason.UPSTREAM_BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT),
        (
            400,
            "context_length_exceeded",
            Reason.UPSTREAM_CONTEXT_LENGTH_EXCEEDED,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (401, None, Reason.UPSTREAM_AUTHENTICATION_FAILED, grpc.StatusCode.UNAUTHENTICATED),
        (403, None, Reason.UPSTREAM_PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED),
        (404, None, Reason.UPSTREAM_NOT_FOUND, grpc.StatusCode.NOT_FOUND),
        (404, "model_not_found", Reason.UPSTREAM_NOT_FOUND, grpc.StatusCode.NOT_FOUND),
        (408, None, Reason.UPSTREAM_TIMEOUT, grpc.StatusCode.DEADLINE_EXCEEDED),
        (409, None, Reason.UPSTREAM_CONFLICT, grpc.StatusCode.ABORTED),
        (429, "rate_limit_exceeded", Reason.UPSTREAM_RATE_LIMITED, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (429, "insufficient_quota", Reason.UPSTREAM_QUOTA_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (500, None, Reason.UPSTREAM_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        (502, None, Reason.UPSTREAM_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        (503, None, Reason.UPSTREAM_UNAVAILABLE, grpc.StatusCode.UNAVAILABLE),
        (418, None, Reason.UPSTREAM_BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_http_error_table(status: int, code: str | None, reason: Reason, grpc_code: grpc.StatusCode) -> None:
    assert reason_for_http(status, code) is reason
    assert REASON_CODES[reason] == grpc_code


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after-ms": "150"}, 0.15),
        ({"retry-after-ms": "150", "retry-after": "9"}, 0.15),
        ({"retry-after": "3600"}, 60.0),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


# 2015-10-21 07:28:00 UTC, the instant of RFC 9110's own example.
EXAMPLE_INSTANT = 1445412480.0


@pytest.mark.parametrize(
    ("value", "now", "expected"),
    [
        # The three forms RFC 9110 section 5.6.7 makes recipients accept, 5 s ahead.
        ("Wed, 21 Oct 2015 07:28:00 GMT", EXAMPLE_INSTANT - 5, 5.0),
        ("Wednesday, 21-Oct-15 07:28:00 GMT", EXAMPLE_INSTANT - 5, 5.0),
        ("Wed Oct 21 07:28:00 2015", EXAMPLE_INSTANT - 5, 5.0),
        # An hour ahead is capped as the seconds form is.
        ("Wed, 21 Oct 2015 07:28:00 GMT", EXAMPLE_INSTANT - 3600, 60.0),
        # A date already past: retry now.
        ("Wed, 21 Oct 2015 07:28:00 GMT", EXAMPLE_INSTANT + 30, 0.0),
        ("Wed, 32 Oct 2015 07:28:00 GMT", EXAMPLE_INSTANT, None),
    ],
)
def test_retry_after_http_date(value: str, now: float, expected: float | None) -> None:
    assert parse_retry_after({"retry-after": value}, now=now) == expected


def test_from_http_keeps_request_id_and_retry_after_only_when_retryable() -> None:
    body = {"error": {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}
    err = from_http(429, {"x-request-id": "req_1", "retry-after": "1"}, body, scrubber=NO_SECRETS)
    assert (err.reason, err.request_id, err.retry_after, err.http_status) == (
        Reason.UPSTREAM_RATE_LIMITED,
        "req_1",
        1.0,
        429,
    )
    quota = from_http(
        429, {"retry-after": "1"}, {"error": {"code": "insufficient_quota", "message": "pay"}}, scrubber=NO_SECRETS
    )
    assert quota.retry_after is None
    assert "slow down" in err.message
