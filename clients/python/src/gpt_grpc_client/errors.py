"""Decoding of the gateway's rich gRPC errors.

Every failure of the gateway is a gRPC status whose ``grpc-status-details-bin``
trailing metadata holds a serialized ``google.rpc.Status``. Its details carry
exactly one ``google.rpc.ErrorInfo`` (domain ``"gpt-grpc"``, reason = an
``ErrorReason`` name), plus ``google.rpc.RetryInfo`` when retrying later makes
sense, ``google.rpc.BadRequest`` for invalid fields and ``google.rpc.QuotaFailure``
when a client's budget is used up (``CLIENT_BUDGET_EXCEEDED``).

This module decodes them with googleapis-common-protos only: the client does not
need grpcio-status.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

__all__ = ["ERROR_DOMAIN", "STATUS_DETAILS_KEY", "GatewayError"]

#: ErrorInfo.domain of the errors the gateway itself raises.
ERROR_DOMAIN = "gpt-grpc"
#: Trailing metadata key of the serialized google.rpc.Status.
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_CODES_BY_VALUE: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}
_REQUEST_ID_KEYS = ("request_id", "request-id", "x-request-id")


class GatewayError(Exception):
    """A failed call to the gateway, with its decoded ``google.rpc.Status`` details.

    Attributes:
        code: The gRPC status code.
        message: The status message (``details()`` of the call).
        reason: ``ErrorInfo.reason`` (an ``ErrorReason`` name such as
            ``"UPSTREAM_RATE_LIMITED"``), or ``""`` when the error carries no ErrorInfo
            (for example a connection failure that never reached the gateway).
        domain: ``ErrorInfo.domain`` (``"gpt-grpc"``), or ``""``.
        metadata: ``ErrorInfo.metadata`` (may include ``http_status``, ``request_id``).
        retry_delay: Seconds to wait before retrying, from ``RetryInfo``; ``None`` when
            the gateway does not suggest a retry.
        field_violations: ``(field, description)`` pairs from ``BadRequest``.
        quota_violations: ``(subject, description)`` pairs from ``QuotaFailure``
            (e.g. ``("client:billing", "daily budget of $5.00 used: ...")``).
        request_id: The request id from ErrorInfo metadata, ``RequestInfo`` or the
            ``x-request-id`` trailer; ``None`` when unknown.
        status: The decoded ``google.rpc.Status``, or ``None`` when there was none.
    """

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    retry_delay: float | None
    field_violations: list[tuple[str, str]]
    quota_violations: list[tuple[str, str]]
    request_id: str | None
    status: status_pb2.Status | None

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        retry_delay: float | None = None,
        field_violations: Iterable[tuple[str, str]] = (),
        quota_violations: Iterable[tuple[str, str]] = (),
        request_id: str | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.retry_delay = retry_delay
        self.field_violations = list(field_violations)
        self.quota_violations = list(quota_violations)
        self.request_id = request_id
        self.status = status

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. ``"UNAVAILABLE"``."""
        return str(self.code.name)

    @property
    def retryable(self) -> bool:
        """Whether the gateway suggested retrying later (it sent RetryInfo)."""
        return self.retry_delay is not None

    def __str__(self) -> str:
        head = f"{self.code_name} {self.reason}" if self.reason else self.code_name
        return f"{head}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code_name}, reason={self.reason!r}, "
            f"message={self.message!r}, retry_delay={self.retry_delay!r}, "
            f"field_violations={self.field_violations!r}, request_id={self.request_id!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructor arguments: rebuild through _restore when pickled.
        return (_restore, (type(self), self.code.value[0], self.message, self._state()))

    def _state(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "domain": self.domain,
            "metadata": self.metadata,
            "retry_delay": self.retry_delay,
            "field_violations": self.field_violations,
            "quota_violations": self.quota_violations,
            "request_id": self.request_id,
            "status": self.status.SerializeToString() if self.status is not None else None,
        }

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> GatewayError:
        """Decode a ``grpc.RpcError`` (sync ``grpc.Call`` or ``grpc.aio.AioRpcError``)."""
        code = _call_value(err, "code")
        message = _call_value(err, "details")
        trailers = _pairs(_call_value(err, "trailing_metadata"))

        status: status_pb2.Status | None = None
        for key, value in trailers:
            if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
                try:
                    status = status_pb2.Status.FromString(value)
                except Exception:  # a malformed trailer must not hide the error itself
                    status = None
                break

        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN
            if status is not None:
                code = _CODES_BY_VALUE.get(status.code, grpc.StatusCode.UNKNOWN)
        if not isinstance(message, str):
            message = status.message if status is not None else (str(err) or "")

        reason = ""
        domain = ""
        metadata: dict[str, str] = {}
        retry_delay: float | None = None
        violations: list[tuple[str, str]] = []
        quota: list[tuple[str, str]] = []
        request_id: str | None = None
        if status is not None:
            have_info = False
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and not have_info:
                    info = error_details_pb2.ErrorInfo()
                    if detail.Unpack(info):
                        have_info = True
                        reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    retry = error_details_pb2.RetryInfo()
                    if detail.Unpack(retry):
                        delay = retry.retry_delay
                        retry_delay = delay.seconds + delay.nanos / 1e9
                elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    if detail.Unpack(bad):
                        violations.extend((v.field, v.description) for v in bad.field_violations)
                elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                    failure = error_details_pb2.QuotaFailure()
                    if detail.Unpack(failure):
                        quota.extend((v.subject, v.description) for v in failure.violations)
                elif detail.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
                    req = error_details_pb2.RequestInfo()
                    if detail.Unpack(req) and req.request_id:
                        request_id = request_id or req.request_id

        for key in _REQUEST_ID_KEYS:
            if metadata.get(key):
                request_id = metadata[key]
                break
        if request_id is None:
            for key, value in trailers:
                if key in _REQUEST_ID_KEYS and isinstance(value, str) and value:
                    request_id = value
                    break

        return cls(
            code,
            message,
            reason=reason,
            domain=domain,
            metadata=metadata,
            retry_delay=retry_delay,
            field_violations=violations,
            quota_violations=quota,
            request_id=request_id,
            status=status,
        )


def _restore(cls: type[GatewayError], code: int, message: str, state: dict[str, Any]) -> GatewayError:
    raw = state.pop("status", None)
    status = status_pb2.Status.FromString(raw) if raw is not None else None
    return cls(_CODES_BY_VALUE.get(code, grpc.StatusCode.UNKNOWN), message, status=status, **state)


def _call_value(err: grpc.RpcError, name: str) -> Any:
    """``err.<name>()`` when the error is also a call (it almost always is), else None."""
    method = getattr(err, name, None)
    if not callable(method):
        return None
    try:
        return method()
    except Exception:
        return None


def _pairs(metadata: Any) -> list[tuple[str, str | bytes]]:
    """Key/value pairs of sync metadata (tuple of pairs) or aio ``grpc.aio.Metadata``."""
    if not metadata:
        return []
    pairs: list[tuple[str, str | bytes]] = []
    try:
        for item in metadata:
            key, value = item
            pairs.append((str(key), value))
    except (TypeError, ValueError):
        return pairs
    return pairs
