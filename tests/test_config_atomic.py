"""Configure is atomic under load: no call ever runs on a mixed snapshot.

Two upstreams each accept only their own key. 100 Configure calls, each switching
endpoint, key and default model together, are interleaved with 2,000 chat calls
(unary and streaming). Every chat call must succeed, and each upstream must only
ever see its own key and its own default model.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from gpt_grpc.server.app import ServerConfig
from tests.conftest import ADMIN, ADMIN_TOKEN, fast_upstream, start_gateway, stop_gateway
from tests.faults.campaign import CallResult, one_call
from tests.standin import Standin

KEY_A = "key-for-upstream-a-0123456789"
KEY_B = "key-for-upstream-b-9876543210"
MODEL_A = "model-of-a"
MODEL_B = "model-of-b"
CHATS = 2_000
CONFIGURES = 100
CONCURRENCY = 50


@pytest.mark.timeout(90)
async def test_configure_switches_endpoint_and_key_atomically_under_load() -> None:
    async with Standin(api_keys={KEY_A}) as a, Standin(api_keys={KEY_B}) as b:
        targets = {
            "a": pb.ConfigureRequest(api_key=KEY_A, endpoint=a.base_url, default_model=MODEL_A),
            "b": pb.ConfigureRequest(api_key=KEY_B, endpoint=b.base_url, default_model=MODEL_B),
        }
        upstream = fast_upstream(a.base_url, api_key=KEY_A, default_model=MODEL_A)
        gw = await start_gateway(ServerConfig(port=0, admin_token=ADMIN_TOKEN, upstream=upstream))
        stub = gw.stub
        try:
            start = (await stub.GetConfiguration(pb.GetConfigurationRequest())).configuration.generation
            # One Configure after every 20 chat calls, alternating upstreams; all run
            # through the same pool of callers, so they interleave with the chats.
            ops: list[tuple[str, int]] = []
            for i in range(CHATS):
                ops.append(("chat", i))
                if i % (CHATS // CONFIGURES) == CHATS // CONFIGURES - 1:
                    ops.append(("configure", len([o for o in ops if o[0] == "configure"])))
            rng = random.Random(5)
            chats: list[CallResult] = []
            generations: list[int] = []
            todo = iter(ops)

            async def caller() -> None:
                for kind, index in todo:
                    if kind == "configure":
                        request = targets["b" if index % 2 == 0 else "a"]
                        reply = await stub.Configure(request, metadata=ADMIN, timeout=10)
                        generations.append(reply.configuration.generation)
                    else:
                        stream = rng.random() < 0.5
                        chats.append(await one_call(stub, index, stream, f"atomic chat {index}", 20))

            async with asyncio.timeout(80):
                await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
            end = (await stub.GetConfiguration(pb.GetConfigurationRequest())).configuration
        finally:
            await stop_gateway(gw)

    failed = [c for c in chats if c.code != "OK" or c.content != f"Echo: {c.message}"]
    assert not failed, f"{len(failed)} chat calls failed, e.g. {failed[0]}"
    assert len(chats) == CHATS
    assert sorted(generations) == list(range(start + 1, start + CONFIGURES + 1))
    assert end.generation == start + CONFIGURES
    # Each upstream saw only its own key and its own default model, and both were used.
    assert len(a.requests) > 100 and len(b.requests) > 100
    assert len(a.requests) + len(b.requests) == CHATS
    assert {(r.api_key, r.body["model"]) for r in a.requests} == {(KEY_A, MODEL_A)}
    assert {(r.api_key, r.body["model"]) for r in b.requests} == {(KEY_B, MODEL_B)}
