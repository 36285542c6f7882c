"""Issue 9: what an attacker or a careless operator could do, and the guarantee that stops it."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import tracemalloc

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from gpt_grpc import tokens
from gpt_grpc.chat import MAX_MODEL_CHARS
from gpt_grpc.gpt import GPT
from gpt_grpc.server.app import MIN_ADMIN_TOKEN_CHARS, ConfigError, GatewayServer, ServerConfig
from gpt_grpc.server.logs import MAX_LOGGED_CHARS, JsonFormatter
from gpt_grpc.server.metrics import OTHER, Metrics
from gpt_grpc.usage import MAX_MODELS, OTHER_MODELS, UsageTracker
from tests.conftest import Gateway
from tests.helpers import details, fail


def test_a_short_admin_token_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match=r"at least 32.*openssl rand -base64 32"):
        GatewayServer(ServerConfig(port=0, admin_token="x" * (MIN_ADMIN_TOKEN_CHARS - 1)))


def test_the_server_command_exits_2_on_a_short_admin_token() -> None:
    env = {"GPT_GRPC_ADMIN_TOKEN": "too-short", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "gpt_grpc.server", "--port", "0"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "must have at least 32" in done.stderr
    assert "too-short" not in done.stderr + done.stdout  # the token itself is never echoed


# --------------------------------------------------------------------------- 3: CountTokens and caller-chosen names


@pytest.mark.parametrize(
    "model",
    ["m" * 4 * 1024 * 1024, "m" * (MAX_MODEL_CHARS + 1), "gpt-4o\nX-Injected: 1", "gpt-4o\x00", "   "],
    ids=["4MB", "257", "newline", "nul", "blank"],
)
async def test_count_tokens_validates_the_model_as_chat_does(gateway: Gateway, model: str) -> None:
    request = pb.CountTokensRequest(text="hello", model=model)
    err = details(await fail(gateway.stub.CountTokens(request, timeout=10)))
    assert (err.code, err.reason, err.fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", ["model"])
    chat = pb.ChatCompletionRequest(user_message="hello", model=model)
    same = details(await fail(gateway.stub.ChatCompletion(chat, timeout=10)))
    assert (same.code, same.fields) == (err.code, err.fields)
    assert same.bad_request == err.bad_request  # one validator, one message
    assert len(err.message) < 1000  # the name itself is not echoed back


def test_counting_with_invented_model_names_pins_no_memory() -> None:
    """60 calls with 4 MB names pinned 240 MB in the model -> encoding memo, for good."""
    gpt = GPT()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(60):
            with pytest.raises(ValueError, match="model"):
                gpt.count_tokens("hello", model=f"{i}" + "m" * 4 * 1024 * 1024)
            tokens.count_text("hello", f"{i}" + "n" * 100_000)  # the core itself memoizes no long name
        gc.collect()
        pinned = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert pinned < 2 * 1024 * 1024, f"{pinned / 1e6:.1f} MB still held"


def test_usage_per_model_is_bounded_in_names_not_in_totals() -> None:
    tracker = UsageTracker()
    for i in range(MAX_MODELS + 500):
        tracker.record_failure(f"invented-{i}")
    models, total = tracker.snapshot()
    assert len(models) == MAX_MODELS + 1 and OTHER_MODELS in {m.model for m in models}
    assert total.failed_requests == MAX_MODELS + 500


# --------------------------------------------------------------------------- 7: logs and labels


async def test_access_log_bounds_a_model_name_the_caller_chose(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """A 5 MB model name made a 5 MB access-log line."""
    caplog.set_level(logging.INFO, logger="gpt_grpc.access")
    huge = "m" * 5 * 1024 * 1024
    await fail(gateway.stub.ChatCompletion(pb.ChatCompletionRequest(user_message="x", model=huge), timeout=10))
    events = [r for r in caplog.records if r.name == "gpt_grpc.access"]
    assert len(events) == 1
    fields = events[0].fields  # type: ignore[attr-defined]
    assert fields["status"] == "INVALID_ARGUMENT"
    assert fields["model"].startswith("mmmm") and len(fields["model"]) <= MAX_LOGGED_CHARS + 40
    assert len(JsonFormatter().format(events[0])) < 2000


def test_metric_labels_never_carry_a_long_model_name() -> None:
    metrics = Metrics()
    assert metrics.model_label("gpt-4o") == "gpt-4o"
    assert metrics.model_label("m" * (MAX_MODEL_CHARS + 1)) == OTHER
