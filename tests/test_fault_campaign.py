"""The fault campaign's CI form, and what it found.

The full run is `python -m tests.faults.campaign --calls 3000 --concurrency 200`.
"""

from __future__ import annotations

from gptgrpc.v1 import gateway_pb2 as pb

from gpt_grpc.standin import Standin
from tests.conftest import Gateway


async def test_streams_give_their_upstream_connection_back_to_the_pool(gateway: Gateway, standin: Standin) -> None:
    # Found by the campaign: the gateway stopped reading at `[DONE]`, leaving the end
    # of the chunked body unread, so httpx closed the connection after every stream.
    for _ in range(5):
        request = pb.StreamChatCompletionRequest(model="gpt-4o-mini", user_message="one two three")
        events = [e async for e in gateway.stub.StreamChatCompletion(request, timeout=10)]
        assert events[-1].HasField("summary")
    assert standin.total_connections == 1
