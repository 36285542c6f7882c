"""The context assistant's pure rules (conversations.py), table by table."""

from __future__ import annotations

from typing import Any

import pytest

from gpt_grpc import conversations as rules
from gpt_grpc import tokens
from gpt_grpc.conversations import Budget, Counted, Plan
from gpt_grpc.errors import GatewayError, Reason
from gpt_grpc.models import Models


def user(text: str, n: int = 10) -> Counted:
    return Counted({"role": "user", "content": text}, n)


def assistant(text: str, n: int = 10) -> Counted:
    return Counted({"role": "assistant", "content": text}, n)


def calls(*ids: str, n: int = 10) -> Counted:
    tool_calls = [{"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ids]
    return Counted({"role": "assistant", "content": None, "tool_calls": tool_calls}, n)


def result(call_id: str, n: int = 10) -> Counted:
    return Counted({"role": "tool", "tool_call_id": call_id, "content": "42"}, n)


# Three turns of 20 tokens each; the second has a tool call and its result (40 tokens).
HISTORY = [
    user("u1"),
    assistant("a1"),
    user("u2"),
    calls("c1"),
    result("c1"),
    assistant("a2"),
    user("u3"),
    assistant("a3"),
]


@pytest.mark.parametrize(
    ("history", "new", "budget", "want"),
    [
        # Everything fits: nothing left out.
        (HISTORY, [user("u4")], Budget(limit=200, reserved=20, fixed=5), Plan(0, 95, 95)),
        # Exactly at the limit still fits.
        (HISTORY, [user("u4")], Budget(limit=115, reserved=20, fixed=5), Plan(0, 95, 95)),
        # One token over: the oldest turn (u1, a1) goes.
        (HISTORY, [user("u4")], Budget(limit=114, reserved=20, fixed=5), Plan(2, 75, 95)),
        # The tool turn goes whole: its call never stays without its result.
        (HISTORY, [user("u4")], Budget(limit=94, reserved=20, fixed=5), Plan(6, 35, 95)),
        (HISTORY, [user("u4")], Budget(limit=54, reserved=20, fixed=5), Plan(8, 15, 95)),
        # The reservation counts: a larger max_tokens leaves more out.
        (HISTORY, [user("u4")], Budget(limit=114, reserved=60, fixed=5), Plan(6, 35, 95)),
        # Tool results continue the turn of the calls they answer: that turn stays whole.
        ([user("u1"), assistant("a1"), user("u2"), calls("c1")], [result("c1")], Budget(64, 10, 5), Plan(2, 35, 55)),
        # An empty history.
        ([], [user("u1")], Budget(limit=40, reserved=20, fixed=5), Plan(0, 15, 15)),
    ],
)
def test_plan(history: list[Counted], new: list[Counted], budget: Budget, want: Plan) -> None:
    got = rules.plan(history, new, budget)
    assert got == want
    assert got.prompt_tokens + budget.reserved <= budget.limit
    sent = [*history[got.keep_from :], *new]
    assert rules.turn_starts([c.message for c in sent])[0] == 0 and (not sent or sent[0].message["role"] != "tool")


@pytest.mark.parametrize(
    ("history", "new", "budget", "numbers"),
    [
        # The new message alone: 50 tokens + 5 fixed + 20 reserved = 75 > 60.
        (HISTORY, [user("long", 50)], Budget(limit=60, reserved=20, fixed=5), ("has 50 tokens", "75 tokens", "60")),
        # Tool results cannot leave their calls behind: the call (10) + user (10) + result (10) must fit.
        ([user("u1"), calls("c1")], [result("c1")], Budget(limit=40, reserved=20, fixed=5), ("has 10 tokens", "55")),
        # The system message alone is too much.
        ([], [user("u1", 1)], Budget(limit=100, reserved=20, fixed=90), ("has 1 tokens", "111 tokens", "100")),
    ],
)
def test_plan_refuses_a_turn_that_cannot_fit(
    history: list[Counted], new: list[Counted], budget: Budget, numbers: tuple[str, ...]
) -> None:
    with pytest.raises(GatewayError) as info:
        rules.plan(history, new, budget)
    assert info.value.reason is Reason.CONVERSATION_CONTEXT_EXCEEDED
    for number in numbers:
        assert number in info.value.message


@pytest.mark.parametrize(
    ("history", "new", "paths", "violations"),
    [
        ([], [user("hi").message], ["user_message"], []),
        # Tool results answering the pending calls, then a user message.
        ([user("u").message, calls("a", "b").message], [result("a").message, result("b").message], ["m0", "m1"], []),
        (
            [user("u").message, calls("a", "b").message],
            [result("a").message, result("b").message, user("next").message],
            ["m0", "m1", "m2"],
            [],
        ),
        # A result for a call nobody made.
        ([user("u").message, calls("a").message], [result("zz").message], ["m0"], ["m0.tool_call_id"]),
        # A user message while calls are unanswered.
        ([user("u").message, calls("a", "b").message], [result("a").message, user("x").message], ["m0", "m1"], ["m0"]),
        # Results after the user message, two user messages, a system message.
        ([], [user("x").message, result("a").message], ["m0", "m1"], ["m1"]),
        ([], [user("x").message, user("y").message], ["m0", "m1"], ["m1"]),
        ([], [{"role": "system", "content": "x"}], ["m0"], ["m0.role"]),
        # Too many bytes (UTF-8: 'é' is two).
        ([], [user("é" * 6).message], ["user_message"], ["user_message"]),
    ],
)
def test_check_input(
    history: list[dict[str, Any]], new: list[dict[str, Any]], paths: list[str], violations: list[str]
) -> None:
    got = rules.check_input(history, new, max_bytes=11, paths=paths)
    assert [v.field for v in got] == violations


@pytest.mark.parametrize(
    ("history", "pending"),
    [
        ([], []),
        ([user("u").message, assistant("a").message], []),
        ([user("u").message, calls("a", "b").message], ["a", "b"]),
        ([user("u").message, calls("a", "b").message, result("b").message], ["a"]),
        ([user("u").message, calls("a").message, result("a").message, assistant("done").message], []),
    ],
)
def test_pending_tool_calls(history: list[dict[str, Any]], pending: list[str]) -> None:
    assert rules.pending_tool_calls(history) == pending


@pytest.mark.parametrize(
    ("limit", "reserve", "allowance"),
    [(128_000, 1024, 512), (2000, 500, 500), (100, 25, 25), (3, 1, 1)],
)
def test_reservations(limit: int, reserve: int, allowance: int) -> None:
    assert rules.default_reserve(limit) == reserve
    assert rules.summary_allowance(limit) == allowance


@pytest.mark.parametrize(
    ("cap", "window", "limit"), [(None, 128_000, 128_000), (500, 128_000, 500), (None, None, None)]
)
def test_context_limit(cap: int | None, window: int | None, limit: int | None) -> None:
    assert rules.context_limit(cap, window) == limit


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4", "gpt-3.5-turbo-0301", "llama3"])
def test_counted_messages_add_up_to_the_prompt(model: str) -> None:
    """Per-message counts (with the model's own encoding) sum to what count_messages says of the prompt."""
    record = Models().resolve(model, priced=False)
    messages = [m.message for m in HISTORY] + [{"role": "user", "content": "naïve café", "name": "bob"}]
    whole = tokens.count_messages(messages, model, encoding=record.encoding).tokens
    parts = rules.reply_priming(record) + sum(rules.count_message(m, record).tokens for m in messages)
    assert parts == whole


def test_summary_request_holds_the_newest_messages_that_fit() -> None:
    def count(prompt: Any) -> int:
        return sum(len(m["content"].split()) for m in prompt)

    covered = [user("first words here"), assistant("second answer"), calls("c9"), result("c9")]
    messages, n = rules.summary_messages("an old summary", covered, room=1000, count=count)
    assert n == 4
    assert messages[0] == {"role": "system", "content": rules.SUMMARY_INSTRUCTIONS}
    transcript = messages[1]["content"]
    assert transcript.startswith("Earlier summary:\nan old summary\n\nMessages:\nUser: first words here\n")
    assert "Assistant called f({})" in transcript and "Tool result (c9): 42" in transcript
    assert count(messages) <= 1000
    # Little room: only the newest messages go in, and the prompt fits.
    framing = count(rules.summary_messages("", [], room=1000, count=count)[0])
    for room, newest in ((framing, 0), (framing + 4, 1), (framing + 9, 2), (framing + 10, 3), (framing + 14, 4)):
        messages, n = rules.summary_messages("", covered, room=room, count=count)
        assert n == newest and count(messages) <= max(room, framing)
