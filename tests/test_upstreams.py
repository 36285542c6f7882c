"""Several upstreams on loopback (issue 13 item 7): 2-3 stand-in upstreams behind one gateway started with
an upstreams file, its breakers set to short intervals so that the tests stay fast. Every loop is bounded
in calls and in time."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb

from gpt_grpc.server.app import ConfigError, GatewayServer, ServerConfig
from gpt_grpc.settings import SettingsUpdate
from gpt_grpc.store import store_from_url
from gpt_grpc.store.base import SettingsDoc
from tests.conftest import ADMIN, ADMIN_TOKEN, TEST_KEY, Gateway, start_gateway, stop_gateway
from tests.helpers import details, fail
from tests.redis_server import RedisServer
from tests.standin import Fault, Standin

HI = pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="hi")
PROBE_INTERVAL = 0.3
THRESHOLD = 3
# Fast retries, as the other server tests use.
RETRIES = SettingsUpdate(max_attempts=3, initial_backoff=0.01, max_backoff=0.05, request_timeout=5.0)


def key_of(name: str) -> str:
    return f"sk-test-{name}-0123456789abcdefghij"


def toml(value: object) -> str:
    """A TOML value for the few types the upstreams file uses."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def write_upstreams(
    path: Path,
    upstreams: Sequence[Mapping[str, Any]],
    fallbacks: Mapping[str, list[str]] | None = None,
    breaker: Mapping[str, Any] | None = None,
) -> str:
    lines = []
    for table in upstreams:
        lines.append("[[upstream]]")
        lines += [f"{k} = {toml(v)}" for k, v in table.items()]
        lines.append("")
    if fallbacks:
        lines.append("[fallbacks]")
        lines += [f"{json.dumps(k)} = {toml(v)}" for k, v in fallbacks.items()]
    if breaker is not None:
        lines.append("[breaker]")
        lines += [f"{k} = {toml(v)}" for k, v in breaker.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


FAST_BREAKER = {"failure_threshold": THRESHOLD, "probe_interval": PROBE_INTERVAL, "close_after": 2}


def upstream(name: str, standin: Standin, **more: object) -> dict[str, Any]:
    return {"name": name, "base_url": standin.base_url, "api_key_env": f"UP_KEY_{name.upper()}", **more}


@asynccontextmanager
async def gateway_with(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    upstreams: Sequence[Mapping[str, Any]],
    fallbacks: Mapping[str, list[str]] | None = None,
    keys: Mapping[str, str] | None = None,
    **config: Any,
) -> AsyncIterator[Gateway]:
    for table in upstreams:
        if "api_key_env" in table:
            monkeypatch.setenv(str(table["api_key_env"]), (keys or {}).get(str(table["name"]), key_of(table["name"])))
    path = write_upstreams(tmp_path / "upstreams.toml", upstreams, fallbacks, FAST_BREAKER)
    gw = await start_gateway(
        ServerConfig(
            port=0, admin_token=ADMIN_TOKEN, upstream=RETRIES, upstreams_file=path, retry_budget=False, **config
        )
    )
    try:
        yield gw
    finally:
        await stop_gateway(gw)


@asynccontextmanager
async def standins(*names: str, **azure: Mapping[str, str]) -> AsyncIterator[dict[str, Standin]]:
    out: dict[str, Standin] = {}
    try:
        for name in names:
            out[name] = Standin(api_keys={key_of(name)}, azure_deployments=azure.get(name))
            await out[name].start()
        yield out
    finally:
        for s in out.values():
            await s.stop()


async def upstream_states(gw: Gateway) -> dict[str, pb.UpstreamStatus]:
    reply = await gw.stub.ListUpstreams(pb.ListUpstreamsRequest())
    return {u.name: u for u in reply.upstreams}


# -------------------------------------------------------------------------- item 7


async def test_primary_failing_calls_go_to_the_secondary_and_the_breaker_bounds_the_primary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with standins("primary", "secondary") as s:
        s["primary"].set_random_faults(1.0, ["unavailable"], seed=1)
        ups = [upstream("primary", s["primary"], priority=1), upstream("secondary", s["secondary"], priority=2)]
        async with gateway_with(tmp_path, monkeypatch, ups) as gw:
            started = time.monotonic()
            for _ in range(40):  # sequential: what reaches the primary is counted exactly
                reply = await gw.stub.ChatCompletion(HI, timeout=10)
                assert reply.upstream == "secondary" and reply.content
            elapsed = time.monotonic() - started
            # The threshold, then one half-open probe per interval at most.
            bound = THRESHOLD + math.floor(elapsed / PROBE_INTERVAL) + 1
            print(f"40 calls in {elapsed:.2f}s: primary got {s['primary'].request_count} (bound {bound})")
            assert s["primary"].request_count <= bound, (s["primary"].request_count, bound)
            assert s["secondary"].request_count == 40
            states = await upstream_states(gw)
            assert states["primary"].state in (pb.BREAKER_STATE_OPEN, pb.BREAKER_STATE_HALF_OPEN)
            assert states["primary"].error_rate == 1.0 and states["secondary"].error_rate == 0.0
            assert states["secondary"].state == pb.BREAKER_STATE_CLOSED
            assert (states["primary"].base_url, list(states["primary"].models)) == (s["primary"].base_url, ["*"])
            assert [u.in_flight for u in states.values()] == [0, 0]
            metrics = gw.server.metrics
            opened = metrics.upstream_breaker_opened.labels("primary")
            assert (
                metrics.registry.get_sample_value(
                    "gpt_grpc_upstream_attempts_by_upstream_total",
                    {"upstream": "primary", "outcome": "UPSTREAM_UNAVAILABLE"},
                )
                == s["primary"].request_count
            )
            assert opened is not None
            assert metrics.registry.get_sample_value("gpt_grpc_upstream_breaker_opened_total", {"upstream": "primary"})


async def test_a_recovered_primary_gets_traffic_back_within_one_probe_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with standins("primary", "secondary") as s:
        s["primary"].set_random_faults(1.0, ["unavailable"], seed=1)
        ups = [upstream("primary", s["primary"], priority=1), upstream("secondary", s["secondary"], priority=2)]
        async with gateway_with(tmp_path, monkeypatch, ups) as gw:
            for _ in range(THRESHOLD + 2):
                await gw.stub.ChatCompletion(HI, timeout=10)
            assert (await upstream_states(gw))["primary"].state != pb.BREAKER_STATE_CLOSED
            s["primary"].set_random_faults(0.0)  # it recovers now
            recovered = time.monotonic()
            served: list[tuple[float, str]] = []
            for _ in range(400):
                began = time.monotonic()
                reply = await gw.stub.ChatCompletion(HI, timeout=10)
                served.append((began, reply.upstream))
                if began > recovered + 3 * PROBE_INTERVAL:
                    break
            # Every call that began once a probe interval had passed went back to the primary.
            late = [u for began, u in served if began >= recovered + PROBE_INTERVAL]
            assert late and set(late) == {"primary"}, served
            assert (await upstream_states(gw))["primary"].state == pb.BREAKER_STATE_CLOSED


async def test_weights_3_to_1_split_1000_calls_within_5_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with standins("heavy", "light") as s:
        ups = [upstream("heavy", s["heavy"], weight=3), upstream("light", s["light"], weight=1)]
        async with gateway_with(tmp_path, monkeypatch, ups) as gw:
            answered: dict[str, int] = {}
            queue = iter(range(1000))

            async def worker() -> None:
                for _ in queue:
                    reply = await gw.stub.ChatCompletion(HI, timeout=30)
                    answered[reply.upstream] = answered.get(reply.upstream, 0) + 1

            await asyncio.gather(*(worker() for _ in range(8)))
            assert answered == {"heavy": s["heavy"].request_count, "light": s["light"].request_count}
            share = answered["heavy"] / 1000
            print(f"heavy:light = {answered['heavy']}:{answered['light']}")
            assert abs(share - 0.75) <= 0.05, answered


async def test_every_upstream_down_is_unavailable_with_the_attempts_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with standins("primary", "secondary") as s:
        for standin in s.values():
            standin.set_random_faults(1.0, ["unavailable"], seed=1)
        ups = [upstream("primary", s["primary"], priority=1), upstream("secondary", s["secondary"], priority=2)]
        async with gateway_with(tmp_path, monkeypatch, ups) as gw:
            err = details(await fail(gw.stub.ChatCompletion(HI, timeout=10)))
            assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
            meta = dict(err.error_infos[0].metadata)
            # 3 attempts: the primary, the secondary, then the primary again (after the backoff).
            assert (
                meta["upstream.primary"] == "gpt-4o-mini UPSTREAM_UNAVAILABLE/503, gpt-4o-mini UPSTREAM_UNAVAILABLE/503"
            )
            assert meta["upstream.secondary"] == "gpt-4o-mini UPSTREAM_UNAVAILABLE/503"
            assert meta["attempts"] == "3" and meta["upstream"] == "primary"
            assert 'upstream "primary"' in err.message
            # Once both breakers are open, a call fails at once, saying so, with a retry delay.
            for _ in range(THRESHOLD):
                await fail(gw.stub.ChatCompletion(HI, timeout=10))
            before = s["primary"].request_count + s["secondary"].request_count
            err = details(await fail(gw.stub.ChatCompletion(HI, timeout=10)))
            assert (err.code, err.reason) == (grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE")
            assert "circuit breaker open" in err.message and "primary, secondary" in err.message
            meta = dict(err.error_infos[0].metadata)
            assert meta["upstream.primary"] == "circuit open" and meta["upstream.secondary"] == "circuit open"
            assert err.retry_info is not None
            assert s["primary"].request_count + s["secondary"].request_count == before


async def test_a_fallback_model_is_used_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with standins("big", "small") as s:
        s["big"].set_random_faults(1.0, ["unavailable"], seed=1)
        ups = [upstream("big", s["big"], models=["gpt-4o"]), upstream("small", s["small"], models=["gpt-4o-mini"])]
        async with gateway_with(tmp_path, monkeypatch, ups, fallbacks={"gpt-4o": ["gpt-4o-mini"]}) as gw:
            request = pb.ChatCompletionRequest(model="gpt-4o", user_message="hi")
            reply = await gw.stub.ChatCompletion(request, timeout=10)
            assert (reply.model, reply.upstream, reply.attempts) == ("gpt-4o-mini", "small", 2)
            assert s["small"].requests[-1].body["model"] == "gpt-4o-mini"
            stream = [
                e
                async for e in gw.stub.StreamChatCompletion(
                    pb.StreamChatCompletionRequest(model="gpt-4o", user_message="hi"), timeout=10
                )
            ]
            summary = stream[-1].summary
            assert (summary.model, summary.upstream) == ("gpt-4o-mini", "small")
            # Usage and cost are recorded under the model that answered.
            usage = await gw.stub.GetUsage(pb.GetUsageRequest())
            by_model = {m.model: m for m in usage.models}
            assert by_model["gpt-4o-mini"].requests == 2 and "gpt-4o" not in by_model
            mini = await gw.stub.ChatCompletion(pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="hi"))
            assert reply.cost_usd == pytest.approx(mini.cost_usd)  # the fallback's price, not gpt-4o's
            # A model no upstream serves, with no fallback: NOT_FOUND, before any attempt.
            err = details(
                await fail(gw.stub.ChatCompletion(pb.ChatCompletionRequest(model="o3-mini", user_message="x")))
            )
            assert (err.code, err.reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_ROUTED")


@pytest.mark.parametrize("serving", ["primary", "secondary"])
async def test_a_cancelled_call_closes_its_upstream_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serving: str
) -> None:
    async with standins("primary", "secondary") as s:
        if serving == "secondary":
            s["primary"].enqueue(Fault(kind="unavailable"), Fault(kind="unavailable"))
        s[serving].enqueue(Fault(kind="hang"), Fault(kind="slow_stream", delay=0.2))
        ups = [upstream("primary", s["primary"], priority=1), upstream("secondary", s["secondary"], priority=2)]
        async with gateway_with(tmp_path, monkeypatch, ups) as gw:
            served = s[serving]
            call = gw.stub.ChatCompletion(HI, timeout=30)
            await served.wait_for(lambda x: len(x.requests) == 1, timeout=5)
            call.cancel()
            await served.wait_for(lambda x: x.requests[0].client_disconnected, timeout=5)
            stream = gw.stub.StreamChatCompletion(
                pb.StreamChatCompletionRequest(model="gpt-4o-mini", user_message="hi")
            )
            first = await stream.read()
            assert first.delta.content
            stream.cancel()
            await served.wait_for(lambda x: len(x.requests) == 2 and x.requests[1].client_disconnected, timeout=5)
            assert not served.requests[1].completed
            states = await upstream_states(gw)
            assert [u.in_flight for u in states.values()] == [0, 0]
            # The cancelled calls are no failures of the upstream.
            assert states[serving].state == pb.BREAKER_STATE_CLOSED and states[serving].error_rate == 0.0


async def test_a_refused_key_marks_that_upstream_out_and_the_call_goes_to_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with standins("primary", "secondary", "third") as s:
        ups = [
            upstream("primary", s["primary"], priority=1),
            upstream("secondary", s["secondary"], priority=2),
            upstream("third", s["third"], priority=3),
        ]
        bad = "sk-test-bad-key-0123456789abcdef"
        async with gateway_with(tmp_path, monkeypatch, ups, keys={"primary": bad}) as gw:
            reply = await gw.stub.ChatCompletion(HI, timeout=10)
            assert (reply.upstream, reply.attempts) == ("secondary", 2)
            states = await upstream_states(gw)
            assert states["primary"].state == pb.BREAKER_STATE_OPEN  # not hidden: marked unhealthy
            assert states["primary"].retry_in.seconds > 0
            await gw.stub.ChatCompletion(HI, timeout=10)
            assert s["primary"].request_count == 1  # out for its cool-down: no second try
        # None left: UNAUTHENTICATED, naming the upstream; the keys never shown.
        async with gateway_with(tmp_path, monkeypatch, ups[:2], keys={"primary": bad, "secondary": bad}) as gw:
            err = details(await fail(gw.stub.ChatCompletion(HI, timeout=10)))
            assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UPSTREAM_AUTHENTICATION_FAILED")
            assert 'upstream "secondary"' in err.message and bad not in err.message
            meta = dict(err.error_infos[0].metadata)
            assert meta["upstream.primary"] == "gpt-4o-mini UPSTREAM_AUTHENTICATION_FAILED/401"
            assert meta["upstream.secondary"] == "gpt-4o-mini UPSTREAM_AUTHENTICATION_FAILED/401"
            err = details(await fail(gw.stub.ChatCompletion(HI, timeout=10)))  # both out now
            assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UPSTREAM_AUTHENTICATION_FAILED")
            assert "primary, secondary" in err.message


# -------------------------------------------------------------------------- Azure (item 5)


async def test_failover_to_azure_openai(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with standins("openai", "azure", azure={"prod-gpt4o": "gpt-4o"}) as s:
        s["openai"].set_random_faults(1.0, ["unavailable"], seed=1)
        ups = [
            upstream("openai", s["openai"], priority=1),
            {
                "name": "azure",
                "kind": "azure",
                "base_url": s["azure"].root_url,
                "api_version": "2024-10-21",
                "api_key_env": "UP_KEY_AZURE",
                "deployments": {"gpt-4o": "prod-gpt4o"},
                "priority": 2,
            },
        ]
        async with gateway_with(tmp_path, monkeypatch, ups) as gw:
            reply = await gw.stub.ChatCompletion(pb.ChatCompletionRequest(model="gpt-4o", user_message="hi"))
            assert (reply.upstream, reply.model) == ("azure", "gpt-4o")
            seen = s["azure"].requests[-1]
            assert seen.path == "/openai/deployments/prod-gpt4o/chat/completions"
            assert seen.query == "api-version=2024-10-21" and seen.deployment == "prod-gpt4o"
            assert seen.headers["api-key"] == key_of("azure") and "authorization" not in seen.headers
            events = [
                e async for e in gw.stub.StreamChatCompletion(
                    pb.StreamChatCompletionRequest(model="gpt-4o", user_message="stream"), timeout=10
                )
            ]  # fmt: skip
            assert events[-1].summary.upstream == "azure" and events[0].delta.content
            # Azure serves only its deployments' models: gpt-4o-mini has just the failing openai upstream.
            err = details(await fail(gw.stub.ChatCompletion(HI, timeout=10)))
            assert err.reason == "UPSTREAM_UNAVAILABLE"
        # A wrong Azure key is a 401 from Azure's api-key check.
        async with gateway_with(tmp_path, monkeypatch, ups[1:], keys={"azure": "wrong-azure-key-0123456789"}) as gw:
            err = details(
                await fail(gw.stub.ChatCompletion(pb.ChatCompletionRequest(model="gpt-4o", user_message="x")))
            )
            assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UPSTREAM_AUTHENTICATION_FAILED")
            assert "wrong-azure-key" not in err.message


# -------------------------------------------------------------------------- start-up, Configure


async def test_file_wins_over_the_shorthand_with_one_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with standins("only") as s, Standin(api_keys={TEST_KEY}) as shorthand:
        monkeypatch.setenv("UP_KEY_ONLY", key_of("only"))
        path = write_upstreams(tmp_path / "u.toml", [upstream("only", s["only"])], breaker=FAST_BREAKER)
        caplog.set_level(logging.INFO, "gpt_grpc.server")
        config = ServerConfig(
            port=0, admin_token=ADMIN_TOKEN, upstream=SettingsUpdate(api_key=TEST_KEY, endpoint=shorthand.base_url),
            upstreams_file=path,
        )  # fmt: skip
        gw = await start_gateway(config)
        try:
            assert (await gw.stub.ChatCompletion(HI)).upstream == "only"
            assert shorthand.request_count == 0
            ignored = [r for r in caplog.records if "OPENAI_BASE_URL (--endpoint) is ignored" in r.getMessage()]
            assert len(ignored) == 1
            conf = (await gw.stub.GetConfiguration(pb.GetConfigurationRequest())).configuration
            assert conf.upstreams_source == "file"
            (only,) = conf.upstreams.upstreams
            assert (only.name, only.api_key_masked, only.HasField("api_key")) == ("only", "sk-...ghij", False)
            assert only.breaker.probe_interval.ToTimedelta().total_seconds() == PROBE_INTERVAL
        finally:
            await stop_gateway(gw)
        bad = write_upstreams(
            tmp_path / "bad.toml",
            [{"name": "x", "base_url": "http://169.254.169.254/v1", "api_key_env": "UP_KEY_ONLY"}],
        )
        with pytest.raises(
            ConfigError, match=r"bad.toml is invalid: upstream\[0\]\.base_url: must not point at a link-local"
        ):
            GatewayServer(ServerConfig(port=0, upstreams_file=bad))
        with pytest.raises(ConfigError, match="cannot read the upstreams file"):
            GatewayServer(ServerConfig(port=0, upstreams_file=str(tmp_path / "missing.toml")))


def configured(*tables: pb.Upstream, fallbacks: Mapping[str, list[str]] | None = None) -> pb.ConfigureRequest:
    return pb.ConfigureRequest(
        upstreams=pb.UpstreamSet(
            upstreams=list(tables),
            fallbacks=[pb.FallbackModels(model=m, fallbacks=f) for m, f in (fallbacks or {}).items()],
            breaker=pb.BreakerPolicy(failure_threshold=THRESHOLD),
        )
    )


async def test_configure_replaces_the_set_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with standins("a", "b") as s:
        async with gateway_with(tmp_path, monkeypatch, [upstream("a", s["a"])]) as gw:
            bad = configured(
                pb.Upstream(name="b", base_url=s["b"].base_url, api_key=key_of("b")),
                pb.Upstream(name="c", base_url="http://169.254.169.254/v1", api_key="k" * 20, weight=-1),
                pb.Upstream(name="b", base_url="ftp://x"),
            )
            err = details(await fail(gw.stub.Configure(bad, metadata=ADMIN)))
            assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")
            assert {
                "upstreams.upstreams[1].weight",
                "upstreams.upstreams[2].name",
                "upstreams.upstreams[2].base_url",
            } <= set(err.fields)
            assert (await gw.stub.ChatCompletion(HI)).upstream == "a"  # nothing applied
            good = configured(
                pb.Upstream(name="a", base_url=s["a"].base_url, priority=2),  # key kept: same origin
                pb.Upstream(name="b", base_url=s["b"].base_url, api_key=key_of("b"), priority=1),
            )
            conf = (await gw.stub.Configure(good, metadata=ADMIN)).configuration
            assert conf.upstreams_source == "configure"
            assert [(u.name, u.api_key_masked) for u in conf.upstreams.upstreams] == [
                ("a", "sk-...ghij"),
                ("b", "sk-...ghij"),
            ]
            assert key_of("b") not in str(conf)
            assert (await gw.stub.ChatCompletion(HI)).upstream == "b"
            s["b"].enqueue(Fault(kind="unavailable"))
            assert (await gw.stub.ChatCompletion(HI)).upstream == "a"  # a kept its key
            moved = configured(pb.Upstream(name="a", base_url=s["b"].base_url))  # a's key never follows
            err = details(await fail(gw.stub.Configure(moved, metadata=ADMIN)))
            assert err.fields == ["upstreams.upstreams[0].api_key"]
            both = pb.ConfigureRequest(clear_upstreams=True, upstreams=good.upstreams)
            assert details(await fail(gw.stub.Configure(both, metadata=ADMIN))).fields == ["clear_upstreams"]
            names = [u.name for u in (await gw.stub.ListUpstreams(pb.ListUpstreamsRequest())).upstreams]
            assert names == ["a", "b"]
            conf = (await gw.stub.Configure(pb.ConfigureRequest(clear_upstreams=True), metadata=ADMIN)).configuration
            assert not conf.HasField("upstreams") and conf.upstreams_source == ""
            # The shorthand again: no key was ever given to it here.
            err = details(await fail(gw.stub.ChatCompletion(HI)))
            assert err.reason == "API_KEY_MISSING"


async def test_a_set_configured_on_one_replica_reaches_another_with_keys_sealed(
    redis_server: RedisServer, redis_url: str
) -> None:
    secret = "upstreams-secret-key-for-tests-0123456789"
    async with standins("a") as s:

        def config() -> ServerConfig:
            return ServerConfig(
                port=0, admin_token=ADMIN_TOKEN, upstream=RETRIES, store_url=redis_url, secret_key=secret,
                retry_budget=False,
            )  # fmt: skip

        one, two = await start_gateway(config()), await start_gateway(config())
        try:
            await one.stub.Configure(
                configured(pb.Upstream(name="a", base_url=s["a"].base_url, api_key=key_of("a"))), metadata=ADMIN
            )
            raw = redis_server.command("GET", "gptgrpc:settings")
            assert b'"sealed"' in raw and key_of("a").encode() not in raw
            async with asyncio.timeout(5):
                while (
                    await two.stub.GetConfiguration(pb.GetConfigurationRequest())
                ).configuration.upstreams_source != "configure":
                    await asyncio.sleep(0.02)
            assert (await two.stub.ChatCompletion(HI)).upstream == "a"
            assert s["a"].requests[-1].api_key == key_of("a")
        finally:
            await stop_gateway(one)
            await stop_gateway(two)
        restarted = await start_gateway(config())  # a new replica reads it from the store
        try:
            assert (await restarted.stub.ChatCompletion(HI)).upstream == "a"
        finally:
            await stop_gateway(restarted)


async def test_a_stored_record_is_revalidated_under_the_egress_policy(redis_url: str) -> None:
    """A settings record read back from the shared store is held to the egress policy (it was not before)."""
    store = store_from_url(redis_url)
    await store.open()
    record = {
        "version": 1,
        "settings": {
            "endpoint": "http://169.254.169.254/v1", "organization": None, "project": None,
            "default_model": "gpt-4o-mini", "request_timeout": 5.0,
            "retry": {"max_attempts": 3, "initial_backoff": 0.01, "max_backoff": 0.05},
        },
        "api_key": None,
        "upstreams": None,
    }  # fmt: skip
    try:
        assert await store.save_settings(SettingsDoc(7, json.dumps(record).encode()), 0)
    finally:
        await store.close()
    server = GatewayServer(ServerConfig(port=0, store_url=redis_url, upstream=SettingsUpdate(api_key=TEST_KEY)))
    try:
        with pytest.raises(ConfigError, match="must not point at a link-local, metadata or unspecified address"):
            await server.start()
    finally:
        if server.port:  # it started (the defect): stop it, so that the failure is reported
            await server.stop(grace=0)
        await server.engine.aclose()
