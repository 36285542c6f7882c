"""A caller's deadline is recorded as DEADLINE_EXCEEDED, deterministically; a real cancel stays CANCELLED.

When a call's deadline passes, grpc.aio cancels its handler exactly as it does
when the caller cancels, and the gateway's own wait for the upstream may end
at the same instant: which of the two came first used to decide whether the
call was logged and counted as CANCELLED or DEADLINE_EXCEEDED (issue 11 item
3). Each case runs many calls at once, several rounds in a bounded loop, so
that a race would show, with a deadline below a second (grpc-timeout carries it
to the millisecond) and one above (rounded up to 10 ms units: the caller's own
timer fires and cancels first, which is what made the race go either way).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from tests.conftest import Gateway
from tests.helpers import access_lines
from tests.standin import Fault, Standin

CALLS = 12  # at once, per round and case
SHORT, ROUNDED = 0.3, 1.2  # seconds: callers' deadlines, far below the request timeout (5 s)
ROUNDS = {SHORT: 3, ROUNDED: 2}
LONG = 30.0  # seconds: a deadline no call here reaches
WAIT_SECONDS = 10.0  # bound on waiting for the stand-in to see a request
WORDS = " ".join(f"w{i}" for i in range(200))


@dataclass
class Caller:
    gw: Gateway
    standin: Standin
    deadline: float
    request_id: str

    def unary(self) -> Any:
        request = pb.ChatCompletionRequest(user_message="hi")
        return self.gw.stub.ChatCompletion(request, timeout=self.deadline, metadata=self.metadata)

    def stream(self) -> Any:
        request = pb.StreamChatCompletionRequest(user_message=WORDS)
        return self.gw.stub.StreamChatCompletion(request, timeout=self.deadline, metadata=self.metadata)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", self.request_id),)

    async def upstream_saw_it(self) -> None:
        await self.standin.wait_for(
            lambda s: any(r.headers.get("x-client-request-id") == self.request_id for r in s.requests), WAIT_SECONDS
        )


async def until_deadline_unary(caller: Caller) -> tuple[grpc.StatusCode, int]:
    try:
        await caller.unary()
    except grpc.aio.AioRpcError as err:
        return err.code(), 0
    return grpc.StatusCode.OK, 0


async def until_deadline_stream(caller: Caller) -> tuple[grpc.StatusCode, int]:
    deltas = 0
    try:
        async for _ in caller.stream():
            deltas += 1
    except grpc.aio.AioRpcError as err:
        return err.code(), deltas
    return grpc.StatusCode.OK, deltas


async def cancelled_unary(caller: Caller) -> tuple[grpc.StatusCode, int]:
    call = caller.unary()
    await caller.upstream_saw_it()  # the upstream hangs: the call is waiting on it
    call.cancel()
    return (await call.code()), 0


async def cancelled_stream(caller: Caller) -> tuple[grpc.StatusCode, int]:
    call = caller.stream()
    await call.read()  # a delta flowed
    call.cancel()
    return (await call.code()), 1


def answered(ids: set[str | None]) -> Callable[[list[dict[str, Any]]], bool]:
    """Whether there is an access line for each of `ids`."""
    return lambda lines: ids <= {line["request_id"] for line in lines}


Case = Callable[[Caller], Awaitable[tuple[grpc.StatusCode, int]]]
DEADLINE_PASSES = ("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED")
CANCELS = ("CANCELLED", None)


@pytest.mark.parametrize(
    ("method", "fault", "case", "deadline", "recorded", "deltas"),
    [
        # The upstream never answers: the deadline passes while waiting for it.
        ("ChatCompletion", Fault(kind="hang"), until_deadline_unary, SHORT, DEADLINE_PASSES, False),
        ("ChatCompletion", Fault(kind="hang"), until_deadline_unary, ROUNDED, DEADLINE_PASSES, False),
        # Before the first delta (this was the race).
        ("StreamChatCompletion", Fault(kind="hang"), until_deadline_stream, SHORT, DEADLINE_PASSES, False),
        ("StreamChatCompletion", Fault(kind="hang"), until_deadline_stream, ROUNDED, DEADLINE_PASSES, False),
        # Once deltas flow (this was always CANCELLED, with no reason).
        ("StreamChatCompletion", Fault(kind="slow_stream", delay=0.02), until_deadline_stream, SHORT, DEADLINE_PASSES,
         True),
        ("StreamChatCompletion", Fault(kind="slow_stream", delay=0.02), until_deadline_stream, ROUNDED,
         DEADLINE_PASSES, True),
        # Real cancels, long before the deadline, stay CANCELLED.
        ("ChatCompletion", Fault(kind="hang"), cancelled_unary, LONG, CANCELS, False),
        ("StreamChatCompletion", Fault(kind="slow_stream", delay=0.02), cancelled_stream, LONG, CANCELS, True),
    ],
    ids=["unary-deadline", "unary-deadline-rounded", "stream-deadline-before-first-delta",
         "stream-deadline-before-first-delta-rounded", "stream-deadline-after-deltas",
         "stream-deadline-after-deltas-rounded", "unary-cancel", "stream-cancel"],
)  # fmt: skip
async def test_a_deadline_is_recorded_as_deadline_exceeded_and_a_cancel_as_cancelled(
    gateway: Gateway,
    standin: Standin,
    caplog: pytest.LogCaptureFixture,
    method: str,
    fault: Fault,
    case: Case,
    deadline: float,
    recorded: tuple[str, str | None],
    deltas: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="gpt_grpc.access")
    caller_sees = grpc.StatusCode[recorded[0]]
    await gateway.stub.ChatCompletion(pb.ChatCompletionRequest(user_message="warm up"), timeout=LONG)
    caplog.clear()
    handled = 0
    for round_ in range(ROUNDS.get(deadline, 1)):
        standin.reset()
        standin.enqueue(*[fault] * CALLS)
        callers = [Caller(gateway, standin, deadline, f"deadline-{round_}-{i}") for i in range(CALLS)]
        outcomes = await asyncio.gather(*(case(caller) for caller in callers))
        assert {code for code, _ in outcomes} == {caller_sees}, f"round {round_}: {outcomes}"
        # What the case is about happened (on a loaded machine a stream may not get a delta out in time).
        assert any(relayed for _, relayed in outcomes) == deltas, f"round {round_}: {outcomes}"
        # Every call the upstream saw ran its handler, which writes its access line as it unwinds.
        seen = {r.headers.get("x-client-request-id") for r in standin.requests}
        lines = [line for line in await access_lines(caplog, answered(seen)) if line["method"] == method]
        assert {(line["status"], line.get("reason")) for line in lines} == {recorded}, f"round {round_}: {lines}"
        handled = len(lines)
    assert handled, "no call reached the gateway in time"
    registry = gateway.server.metrics.registry
    assert registry.get_sample_value("gpt_grpc_calls_total", {"method": method, "code": recorded[0]}) == handled
    other = "CANCELLED" if recorded is DEADLINE_PASSES else "DEADLINE_EXCEEDED"
    assert registry.get_sample_value("gpt_grpc_calls_total", {"method": method, "code": other}) is None
    assert gateway.server.admission.in_flight == 0
