"""Decoding google.rpc details from a failed call, as any client would."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2


@dataclass
class Details:
    code: grpc.StatusCode
    message: str
    error_infos: list[error_details_pb2.ErrorInfo] = field(default_factory=list)
    retry_info: error_details_pb2.RetryInfo | None = None
    bad_request: error_details_pb2.BadRequest | None = None
    quota_failure: error_details_pb2.QuotaFailure | None = None

    @property
    def reason(self) -> str:
        assert len(self.error_infos) == 1, f"exactly one ErrorInfo expected, got {self.error_infos}"
        return self.error_infos[0].reason

    @property
    def quota_violations(self) -> list[tuple[str, str]]:
        return [(v.subject, v.description) for v in self.quota_failure.violations] if self.quota_failure else []

    @property
    def fields(self) -> list[str]:
        return [v.field for v in self.bad_request.field_violations] if self.bad_request else []


def details(err: grpc.aio.AioRpcError) -> Details:
    out = Details(err.code(), err.details() or "")
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            assert status.code == err.code().value[0]
            for any_ in status.details:
                if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    any_.Unpack(info)
                    out.error_infos.append(info)
                elif any_.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    out.retry_info = error_details_pb2.RetryInfo()
                    any_.Unpack(out.retry_info)
                elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    out.bad_request = error_details_pb2.BadRequest()
                    any_.Unpack(out.bad_request)
                elif any_.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                    out.quota_failure = error_details_pb2.QuotaFailure()
                    any_.Unpack(out.quota_failure)
    return out


async def fail(call: object) -> grpc.aio.AioRpcError:
    """The error a call that must fail ended with."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


ACCESS_LINE_SECONDS = 5.0


async def access_lines(
    caplog: pytest.LogCaptureFixture, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """The access-log lines so far, once `done(lines)` holds (waited for, bounded).

    A handler writes its line as it unwinds, which may come after its caller saw the status.
    Needs `caplog.set_level(logging.INFO, logger="gpt_grpc.access")`.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + ACCESS_LINE_SECONDS
    while True:
        lines = [r.fields for r in caplog.records if r.name == "gpt_grpc.access"]  # type: ignore[attr-defined]
        if done(lines) or loop.time() > give_up:
            assert done(lines), lines
            return lines
        await asyncio.sleep(0.01)
