"""Bad input wholesale: whatever a caller sends, the gateway answers with a defined status."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from tests.conftest import Gateway
from tests.helpers import Details, details

# --------------------------------------------------------------------------- regressions
# Found by the tests above; pinned here in-process, where they run in milliseconds.


async def _fails(call: Any) -> Details:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return details(info.value)


async def test_thousands_of_invalid_fields_still_arrive_as_invalid_argument(gateway: Gateway) -> None:
    # 10,000 violations made a 430 KB status trailer; the client dropped it past its
    # 16 KiB metadata limit and saw RESOURCE_EXHAUSTED without any details.
    request = pb.ChatCompletionRequest(messages=[pb.ChatMessage(role=pb.ROLE_USER)] * 10_000)
    err = await _fails(gateway.stub.ChatCompletion(request, timeout=10))
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
    assert err.fields[:2] == ["messages[0].content", "messages[1].content"] and len(err.fields) == 20
    assert "10000 invalid fields" in err.message and len(err.message) < 1200
