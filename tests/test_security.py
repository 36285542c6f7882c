"""Issue 9: what an attacker or a careless operator could do, and the guarantee that stops it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import math
import os
import stat
import subprocess
import sys
import tracemalloc
from pathlib import Path

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gpt_grpc import egress, tokens
from gpt_grpc.chat import MAX_MODEL_CHARS
from gpt_grpc.egress import EgressPolicy, endpoint_problem
from gpt_grpc.errors import GatewayError
from gpt_grpc.gpt import GPT
from gpt_grpc.server.app import MIN_ADMIN_TOKEN_CHARS, ConfigError, GatewayServer, ServerConfig, parse_args
from gpt_grpc.server.logs import MAX_LOGGED_CHARS, JsonFormatter
from gpt_grpc.server.metrics import OTHER, Metrics
from gpt_grpc.server.servicer import MAX_COUNT_TOKENS_BYTES
from gpt_grpc.settings import Settings, SettingsUpdate, apply
from gpt_grpc.state import StateFile, StateFileError
from gpt_grpc.usage import MAX_MODELS, OTHER_MODELS, UsageTracker
from tests.conftest import ADMIN, ADMIN_TOKEN, TEST_KEY, Gateway, fast_upstream, start_gateway, stop_gateway
from tests.helpers import details, fail
from tests.standin import Fault, Standin


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


# --------------------------------------------------------------------------- 7: the state file


def test_state_file_write_follows_no_symlink_planted_at_the_temporary_name(tmp_path: Path) -> None:
    """The temporary name was predictable (`.state.json.<pid>.tmp`) and opened without O_EXCL:
    a symlink planted there made the gateway write the key through it, wherever it pointed."""
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    state = StateFile(tmp_path / "state.json")
    (tmp_path / f".state.json.{os.getpid()}.tmp").symlink_to(victim)
    settings = apply(Settings(), SettingsUpdate(api_key=TEST_KEY))
    state.save(settings)
    assert victim.read_text() == "untouched"
    assert state.load() == settings
    assert stat.S_IMODE(os.lstat(state.path).st_mode) == 0o600 and not state.path.is_symlink()
    # Saved again and again, each under a fresh random name: nothing is left behind.
    state.save(settings)
    planted = f".state.json.{os.getpid()}.tmp"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([planted, "state.json", "victim"])


def test_state_file_temporary_is_created_exclusively(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []
    real_open = os.open

    def spy(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".tmp"):
            opened.append(flags)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    StateFile(tmp_path / "state.json").save(Settings())
    assert len(opened) == 1
    assert opened[0] & os.O_EXCL and opened[0] & os.O_NOFOLLOW and opened[0] & os.O_CREAT


# --------------------------------------------------------------------------- 7: start-up


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpt_grpc.server", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "OPENAI_API_KEY": TEST_KEY, **(env or {})},
    )


def test_a_deeply_nested_state_file_ends_in_a_clear_message(tmp_path: Path) -> None:
    """json.loads raised RecursionError, which ended start-up in a traceback."""
    path = tmp_path / "state.json"
    path.write_text('{"version": 1, "settings": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(StateFileError, match="is corrupt"):
        StateFile(path).load()
    done = _start("--state-file", str(path))
    assert done.returncode == 2
    assert "is corrupt" in done.stderr and "Traceback" not in done.stderr


def test_a_certificate_and_key_that_do_not_match_end_in_a_clear_message(pki: Path) -> None:
    """gRPC said only "Failed to bind to address" (and a traceback)."""
    args = ("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "client.key"))
    done = _start(*args)
    assert done.returncode == 2, done.stderr
    assert "do not match" in done.stderr and "Traceback" not in done.stderr
    assert "Failed to bind" not in done.stderr


def test_a_key_file_that_is_not_a_key_ends_in_a_clear_message(pki: Path) -> None:
    done = _start("--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.csr"))
    assert done.returncode == 2, done.stderr
    assert "server.csr" in done.stderr and "Traceback" not in done.stderr


# --------------------------------------------------------------------------- 7: CountTokens


async def test_count_tokens_counts_against_the_client_request_rate(gateway: Gateway) -> None:
    """CountTokens ignored client limits: a client held to 2 requests a minute could count all day."""
    limits = pb.ClientLimits(requests_per_minute=2, budget_usd=0, budget_period=pb.BUDGET_PERIOD_DAY)
    reply = await gateway.stub.CreateClient(pb.CreateClientRequest(name="counter", limits=limits), metadata=ADMIN)
    client = (("authorization", f"Bearer {reply.token}"),)
    count = pb.CountTokensRequest(text="hello world")
    # A spent budget stops chat calls, not counting: counting costs no money.
    assert (await gateway.stub.CountTokens(count, metadata=client, timeout=10)).token_count == 2
    assert (await gateway.stub.CountTokens(count, metadata=client, timeout=10)).token_count == 2
    err = details(await fail(gateway.stub.CountTokens(count, metadata=client, timeout=10)))
    assert (err.code, err.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CLIENT_RATE_LIMITED")
    assert err.retry_info is not None
    # The admin token is not a client: no client limits apply to it.
    assert (await gateway.stub.CountTokens(count, metadata=ADMIN, timeout=10)).token_count == 2


async def test_count_tokens_refuses_texts_past_its_size_cap(gateway: Gateway) -> None:
    at_cap = pb.CountTokensRequest(text="ab " * (MAX_COUNT_TOKENS_BYTES // 3) + "a")
    assert len(at_cap.text) == MAX_COUNT_TOKENS_BYTES
    assert (await gateway.stub.CountTokens(at_cap, timeout=30)).token_count > MAX_COUNT_TOKENS_BYTES // 3
    for past in (
        pb.CountTokensRequest(text="a" * (MAX_COUNT_TOKENS_BYTES + 1)),
        pb.CountTokensRequest(text="é" * (MAX_COUNT_TOKENS_BYTES // 2 + 1)),  # counted in UTF-8 bytes
        pb.CountTokensRequest(messages=[pb.ChatMessage(role=pb.ROLE_USER, content="a" * 1024 * 1024)] * 5),
    ):
        err = details(await fail(gateway.stub.CountTokens(past, timeout=30)))
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
        assert err.fields == ["text" if past.text else "messages"]
        assert "4 MiB" in err.bad_request.field_violations[0].description  # type: ignore[union-attr]


# --------------------------------------------------------------------------- 7: health and reflection

GARBAGE = (b"\x80", b"\xff\xff\xff\xff", b"\x0a\x05ab")  # a cut varint, a field past the maximum, a short string
UNARY, SERVER_STREAM, BIDI = "unary", "server-stream", "bidi"


async def _send_raw(gateway: Gateway, path: str, shape: str, raw: bytes) -> grpc.aio.AioRpcError:
    if shape == UNARY:
        return await fail(gateway.channel.unary_unary(path)(raw, timeout=10))
    if shape == SERVER_STREAM:
        call = gateway.channel.unary_stream(path)(raw, timeout=10)
    else:
        call = gateway.channel.stream_stream(path)(iter([raw]), timeout=10)

    async def drain() -> None:
        async for _ in call:
            pass

    return await fail(drain())


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/grpc.health.v1.Health/Check", UNARY),
        ("/grpc.health.v1.Health/Watch", SERVER_STREAM),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", BIDI),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", BIDI),
    ],
    ids=["health-check", "health-watch", "reflection-v1alpha", "reflection-v1"],
)
async def test_garbage_to_health_and_reflection_is_invalid_argument_logged_once(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, path: str, shape: str
) -> None:
    """They answered UNKNOWN ("Exception deserializing request!") with a traceback in the log per call."""
    caplog.set_level(logging.INFO)
    for raw in GARBAGE * 2:
        err = await _send_raw(gateway, path, shape, raw)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (raw, err.code(), err.details())
        assert "Error" not in (err.details() or "") and "Exception" not in (err.details() or "")
    noted = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(noted) == 1 and path in noted[0].getMessage(), [r.getMessage() for r in noted]
    assert noted[0].exc_info is None and "Traceback" not in caplog.text
    # The service still answers a proper request.
    health = health_pb2_grpc.HealthStub(gateway.channel)
    assert (
        await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
    ).status == health_pb2.HealthCheckResponse.SERVING


# --------------------------------------------------------------------------- 7: idle connections


async def _gateway_with(standin: Standin, **config: float) -> Gateway:
    return await start_gateway(
        ServerConfig(port=0, admin_token=ADMIN_TOKEN, upstream=fast_upstream(standin.base_url), **config)  # type: ignore[arg-type]
    )


async def _state_becomes(channel: grpc.aio.Channel, wanted: grpc.ChannelConnectivity, within: float) -> bool:
    deadline = asyncio.get_running_loop().time() + within
    state = channel.get_state()
    while state != wanted:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left):
                await channel.wait_for_state_change(state)
        state = channel.get_state()
    return True


async def test_an_idle_connection_is_closed_by_the_server(standin: Standin) -> None:
    """Ready HTTP/2 connections were held forever (gRPC's default idle limit is infinite)."""
    gw = await _gateway_with(standin, max_connection_idle=0.3)
    try:
        await gw.stub.GetConfiguration(pb.GetConfigurationRequest(), timeout=10)
        assert gw.channel.get_state() == grpc.ChannelConnectivity.READY
        # The server's GOAWAY puts the client's channel back to IDLE; nothing else would within 10 s.
        assert await _state_becomes(gw.channel, grpc.ChannelConnectivity.IDLE, within=10)
        # The next call simply reconnects.
        await gw.stub.GetConfiguration(pb.GetConfigurationRequest(), timeout=10)
    finally:
        await stop_gateway(gw)


async def test_a_connection_past_its_age_is_replaced_and_calls_in_flight_finish(
    standin: Standin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gpt_grpc.access")
    gw = await _gateway_with(standin, max_connection_age=0.3, max_connection_age_grace=30)
    try:
        standin.enqueue(Fault(kind="slow", delay=1.5))  # a call longer than the age, shorter than the grace
        slow = asyncio.ensure_future(gw.stub.ChatCompletion(pb.ChatCompletionRequest(user_message="slow"), timeout=20))
        for _ in range(20):  # bounded: 20 calls, 0.1 s apart
            await gw.stub.GetConfiguration(pb.GetConfigurationRequest(), timeout=10)
            await asyncio.sleep(0.1)
        assert (await slow).content == "Echo: slow"
        peers = {r.fields["peer"] for r in caplog.records if r.name == "gpt_grpc.access"}  # type: ignore[attr-defined]
        assert len(peers) >= 2, peers  # the client was made to open a new connection
    finally:
        await stop_gateway(gw)


def test_connection_limits_have_defaults_and_flags() -> None:
    default = parse_args([])
    assert (default.max_connection_idle, default.max_connection_age, default.max_connection_age_grace) == (
        300.0,
        3600.0,
        600.0,
    )
    flags = parse_args(["--max-connection-idle", "60", "--max-connection-age", "0", "--max-connection-age-grace", "5"])
    assert (flags.max_connection_idle, flags.max_connection_age, flags.max_connection_age_grace) == (60.0, 0.0, 5.0)


@pytest.mark.parametrize("seconds", [-1.0, math.nan, 1e10])
def test_a_connection_limit_that_cannot_work_stops_start_up(seconds: float) -> None:
    with pytest.raises(ConfigError, match="--max-connection-idle must be"):
        GatewayServer(ServerConfig(port=0, max_connection_idle=seconds))


# --------------------------------------------------------------------------- 5: where prompts and the key may go

REFUSED_ENDPOINTS = [
    "http://169.254.169.254/latest/meta-data",
    "https://169.254.169.254/v1",
    "https://169.254.170.2/v1",  # ECS task metadata
    "https://[fe80::1]/v1",
    "https://[fe80::1%25eth0]/v1",
    "https://[fd00:ec2::254]/v1",
    "https://[::ffff:169.254.169.254]/v1",  # the same, IPv4-mapped
    "https://[64:ff9b::a9fe:a9fe]/v1",  # the same, through NAT64
    "https://2852039166/v1",  # the same, as one number (the resolver reads it so)
    "https://0xa9.0xfe.0xa9fe/v1",
    "https://metadata.google.internal/computeMetadata/v1",
    "https://METADATA.google.internal./v1",
    "https://metadata/v1",
    "https://0.0.0.0/v1",
    "https://0/v1",
    "https://[::]/v1",
    "http://10.0.0.5:8000/v1",  # plain http off loopback
    "http://llm.example.com/v1",
]


@pytest.mark.parametrize(
    ("url", "why"),
    [(u, "plain http" if u.startswith("http:") and "169.254" not in u else "link-local") for u in REFUSED_ENDPOINTS],
)
def test_the_egress_policy_refuses(url: str, why: str) -> None:
    problem = endpoint_problem(url, EgressPolicy())
    assert problem is not None
    assert ("must use https" if why == "plain http" else "link-local, metadata") in problem


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "https://10.0.0.5:8000/v1",  # private ranges: allowed (narrow them with the allowlist)
        "https://[fd12:3456::1]/v1",
        "http://127.0.0.1:11434/v1",
        "http://127.8.9.10/v1",
        "http://[::1]:8000/v1",
        "http://LOCALHOST:8000/v1",
        "https://169.254.example.com/v1",  # a name, not an address
    ],
)
def test_the_egress_policy_allows(url: str) -> None:
    assert endpoint_problem(url, EgressPolicy()) is None


def test_the_operator_flags_widen_http_and_narrow_hosts() -> None:
    insecure = EgressPolicy.of(allow_insecure=True, allowed_hosts=None)
    assert endpoint_problem("http://10.0.0.5:8000/v1", insecure) is None
    assert endpoint_problem("http://169.254.169.254/v1", insecure) is not None  # never metadata
    allow = EgressPolicy.of(allow_insecure=False, allowed_hosts=" api.openai.com, 127.0.0.1 ,[::1],")
    assert allow.allowed_hosts == {"api.openai.com", "127.0.0.1", "::1"}
    assert endpoint_problem("https://API.openai.com./v1", allow) is None
    assert endpoint_problem("http://[::1]:9/v1", allow) is None
    assert "allowed-upstream-hosts" in (endpoint_problem("https://evil.example/v1", allow) or "")
    assert EgressPolicy.of(allow_insecure=False, allowed_hosts="").allowed_hosts is None


async def _configure(gateway: Gateway, **fields: str) -> pb.Configuration:
    reply = await gateway.stub.Configure(pb.ConfigureRequest(**fields), metadata=ADMIN, timeout=10)
    return reply.configuration


async def test_moving_the_endpoint_to_another_host_needs_the_key_in_the_same_configure(
    gateway: Gateway, standin: Standin
) -> None:
    """An endpoint change alone kept the key, which then went to the new host with every call."""
    before = (await gateway.stub.GetConfiguration(pb.GetConfigurationRequest(), timeout=10)).configuration
    async with Standin(api_keys={"other-key"}) as other:
        err = details(await fail(gateway.stub.Configure(pb.ConfigureRequest(endpoint=other.base_url), metadata=ADMIN)))
        assert (err.code, err.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["api_key"])
        assert "another host" in err.bad_request.field_violations[0].description  # type: ignore[union-attr]
        now = (await gateway.stub.GetConfiguration(pb.GetConfigurationRequest(), timeout=10)).configuration
        assert now == before
        await gateway.stub.ChatCompletion(pb.ChatCompletionRequest(user_message="hi"), timeout=10)
        assert other.requests == []  # the key never went there
        # Same host and port, another path: the key stays.
        moved = await _configure(gateway, endpoint=standin.base_url + "/")
        assert moved.api_key_set and moved.generation == before.generation + 1
        # With a key of its own, the move is fine.
        assert (await _configure(gateway, endpoint=other.base_url, api_key="other-key")).endpoint == other.base_url
        await gateway.stub.ChatCompletion(pb.ChatCompletionRequest(user_message="hi"), timeout=10)
        assert [r.api_key for r in other.requests] == ["other-key"]


@pytest.mark.parametrize("url", REFUSED_ENDPOINTS[:4] + REFUSED_ENDPOINTS[10:12] + REFUSED_ENDPOINTS[-2:])
async def test_configure_refuses_metadata_and_remote_plain_http(gateway: Gateway, url: str) -> None:
    before = (await gateway.stub.GetConfiguration(pb.GetConfigurationRequest(), timeout=10)).configuration
    err = details(
        await fail(gateway.stub.Configure(pb.ConfigureRequest(endpoint=url, api_key="k-123"), metadata=ADMIN))
    )
    assert (err.code, err.reason, err.fields) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST", ["endpoint"])
    assert (await gateway.stub.GetConfiguration(pb.GetConfigurationRequest(), timeout=10)).configuration == before


async def test_configure_refuses_a_name_that_resolves_to_a_metadata_address(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = egress.resolve_host

    async def resolver(host: str) -> list[egress.IPAddress]:
        if host == "rebind.example":
            return [ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("169.254.169.254")]
        return await real(host)

    monkeypatch.setattr(egress, "resolve_host", resolver)
    err = details(
        await fail(
            gateway.stub.Configure(
                pb.ConfigureRequest(endpoint="https://rebind.example/v1", api_key="k-123"), metadata=ADMIN
            )
        )
    )
    assert (err.code, err.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["endpoint"])
    assert "resolves to 169.254.169.254" in err.bad_request.field_violations[0].description  # type: ignore[union-attr]
    # The system resolver answers for localhost (loopback): accepted.
    assert (await _configure(gateway, endpoint="https://localhost:9/v1", api_key="k-123")).endpoint


async def test_the_allowlist_and_insecure_flag_apply_to_configure(standin: Standin) -> None:
    gw = await start_gateway(
        ServerConfig(
            port=0,
            admin_token=ADMIN_TOKEN,
            upstream=fast_upstream(standin.base_url),
            allowed_upstream_hosts="127.0.0.1,10.0.0.5",
            allow_insecure_upstream=True,
        )
    )
    try:
        assert (await _configure(gw, endpoint="http://10.0.0.5:8000/v1", api_key="k-123")).endpoint
        err = details(
            await fail(
                gw.stub.Configure(
                    pb.ConfigureRequest(endpoint="https://api.openai.com/v1", api_key=TEST_KEY), metadata=ADMIN
                )
            )
        )
        assert err.fields == ["endpoint"] and "allowed-upstream-hosts" in err.message
    finally:
        await stop_gateway(gw)


def test_start_up_applies_the_same_rules() -> None:
    metadata = SettingsUpdate(api_key=TEST_KEY, endpoint="http://169.254.169.254/v1")
    with pytest.raises(GatewayError, match="link-local"):
        GatewayServer(ServerConfig(port=0, upstream=metadata))
    with pytest.raises(GatewayError, match="allowed-upstream-hosts"):  # the default endpoint is not on the list
        GatewayServer(ServerConfig(port=0, allowed_upstream_hosts="127.0.0.1"))


def test_the_server_command_refuses_a_metadata_endpoint_and_state_file(tmp_path: Path) -> None:
    done = _start("--endpoint", "http://169.254.169.254/v1")
    assert done.returncode == 2 and "link-local" in done.stderr and "Traceback" not in done.stderr
    path = tmp_path / "state.json"
    StateFile(path).save(Settings(api_key=TEST_KEY, endpoint="https://metadata.google.internal/v1"))
    done = _start("--state-file", str(path))
    assert done.returncode == 2 and "state file holds invalid settings" in done.stderr
    assert TEST_KEY not in done.stderr
