"""Large texts are counted on a counting thread with its own encodings, to the same result."""

from __future__ import annotations

import threading

import pytest

from gpt_grpc import tokens

TEXTS = ["", "hello world", "<|endoftext|> is text here", "word " * 20_000, "日本語のテキスト" * 5_000]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4", "some-unknown-model"])
async def test_same_count_as_on_the_loop(model: str) -> None:
    for text in TEXTS:
        assert await tokens.count_text_off_loop(text, model) == tokens.count_text(text, model)


async def test_counts_off_the_event_loop_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    original = tokens._count_text_on_thread

    def spy(text: str, model: str, default: str, choice: tokens.EncodingChoice | None) -> tokens.TokenCount:
        seen.append(threading.current_thread().name)
        return original(text, model, default, choice)

    monkeypatch.setattr(tokens, "_count_text_on_thread", spy)
    await tokens.count_text_off_loop("abc", "gpt-4o-mini")
    assert seen and seen[0].startswith("gpt-grpc-count") and seen[0] != threading.current_thread().name
