"""The fault campaign's CI form, and what it found.

The full run is `python -m tests.faults.campaign --calls 3000 --concurrency 200`.
"""

from __future__ import annotations

import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from tests.conftest import Gateway
from tests.faults.campaign import CampaignOptions, run_campaign
from tests.standin import Standin


@pytest.mark.timeout(90)
async def test_fault_campaign_short() -> None:
    report = await run_campaign(CampaignOptions(calls=600, concurrency=100, warmup_calls=200))
    print(report.table())
    assert report.ok, report.table()
    # The mix really was exercised: faults of every kind, retries, and failures.
    assert set(report.faults) == set(report.options.kinds)
    assert max(report.attempts) >= 2
    assert any(c.code != "OK" for c in report.calls)


async def test_streams_give_their_upstream_connection_back_to_the_pool(gateway: Gateway, standin: Standin) -> None:
    # Found by the campaign: the gateway stopped reading at `[DONE]`, leaving the end
    # of the chunked body unread, so httpx closed the connection after every stream.
    for _ in range(5):
        request = pb.StreamChatCompletionRequest(model="gpt-4o-mini", user_message="one two three")
        events = [e async for e in gateway.stub.StreamChatCompletion(request, timeout=10)]
        assert events[-1].HasField("summary")
    assert standin.total_connections == 1
