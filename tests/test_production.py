"""Fit for production: metrics, JSON logs with request ids, TLS/mTLS, per-client keys, limits, budgets."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from gptgrpc.v1 import gateway_pb2 as pb
from prometheus_client.parser import text_string_to_metric_families

from gpt_grpc.server.app import ServerConfig
from gpt_grpc_client import AsyncClient, GatewayError
from tests.conftest import ADMIN, ADMIN_TOKEN, TEST_KEY, Gateway, fast_upstream, start_gateway, stop_gateway
from tests.helpers import details, fail
from tests.standin import Fault, Standin
from tests.test_lifecycle import ServerProcess, wait_serving

HI = pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="hello metrics")


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
async def metered(standin: Standin) -> AsyncIterator[Gateway]:
    config = ServerConfig(
        port=0, admin_token=ADMIN_TOKEN, upstream=fast_upstream(standin.base_url), metrics_port=0, retry_budget=True
    )
    gw = await start_gateway(config)
    try:
        yield gw
    finally:
        await stop_gateway(gw)


# -- metrics -------------------------------------------------------------------------


async def test_metrics_count_known_traffic(metered: Gateway, standin: Standin) -> None:
    replies = [await metered.stub.ChatCompletion(HI) for _ in range(3)]
    standin.enqueue(Fault(kind="server_error"))  # one retry, then OK
    replies.append(await metered.stub.ChatCompletion(HI))
    standin.enqueue(Fault(kind="model_not_found"))
    await fail(metered.stub.ChatCompletion(HI))
    events = [e async for e in metered.stub.StreamChatCompletion(pb.StreamChatCompletionRequest(user_message="a b c"))]
    summary = events[-1].summary
    port = metered.server.metrics_port
    assert port is not None
    m = scrape(port)

    def value(name: str, **labels: str) -> float:
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("gpt_grpc_calls_total", method="ChatCompletion", code="OK") == 4
    assert value("gpt_grpc_calls_total", method="ChatCompletion", code="NOT_FOUND") == 1
    assert value("gpt_grpc_calls_total", method="StreamChatCompletion", code="OK") == 1
    assert value("gpt_grpc_call_duration_seconds_count", method="ChatCompletion") == 5
    assert value("gpt_grpc_stream_first_chunk_seconds_count") == 1
    # 4 OK unary + 1 stream succeeded upstream; 1 server_error and 1 model_not_found failed.
    assert value("gpt_grpc_upstream_attempts_total", outcome="ok") == 5
    assert value("gpt_grpc_upstream_attempts_total", outcome="UPSTREAM_UNAVAILABLE") == 1
    assert value("gpt_grpc_upstream_attempts_total", outcome="UPSTREAM_NOT_FOUND") == 1
    assert value("gpt_grpc_upstream_retries_total", reason="UPSTREAM_UNAVAILABLE") == 1
    assert value("gpt_grpc_upstream_attempt_duration_seconds_count", outcome="ok") == 5
    prompt = sum(r.usage.prompt_tokens for r in replies) + summary.usage.prompt_tokens
    completion = sum(r.usage.completion_tokens for r in replies) + summary.usage.completion_tokens
    assert value("gpt_grpc_tokens_total", model="gpt-4o-mini", client="anonymous", kind="prompt") == prompt
    assert value("gpt_grpc_tokens_total", model="gpt-4o-mini", client="anonymous", kind="completion") == completion
    cost = sum(r.cost_usd for r in replies) + summary.cost_usd
    assert value("gpt_grpc_cost_usd_total", model="gpt-4o-mini", client="anonymous") == pytest.approx(cost)
    assert value("gpt_grpc_calls_in_flight") == 0
    assert value("gpt_grpc_retry_budget_first_attempts") == 6
    assert value("gpt_grpc_retry_budget_retries") == 1
    assert value("gpt_grpc_event_loop_tasks") > 0
    assert value("process_resident_memory_bytes") > 0


# -- logs and request ids --------------------------------------------------------------


async def test_one_json_line_per_call_with_request_id_and_no_secrets(standin: Standin) -> None:
    server = ServerProcess(standin)
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            await wait_serving(channel)
            from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc

            stub = pb_grpc.GPTServiceStub(channel)
            call = stub.ChatCompletion(HI, metadata=(("x-request-id", "req-from-caller-1"),))
            reply = await call
            trailing = dict(await call.trailing_metadata())
            assert trailing["x-request-id"] == "req-from-caller-1"
            assert standin.requests[-1].headers["x-client-request-id"] == "req-from-caller-1"
            generated = stub.CountTokens(pb.CountTokensRequest(text="abc"))
            await generated
            generated_id = dict(await generated.trailing_metadata())["x-request-id"]
            assert len(generated_id) == 32
            standin.enqueue(Fault(kind="unauthorized"))
            err = await fail(stub.ChatCompletion(HI, metadata=(("x-request-id", "req-failing"),)))
            assert dict(err.trailing_metadata())["x-request-id"] == "req-failing"
            await fail(stub.Configure(pb.ConfigureRequest(default_model="x"), metadata=bearer("wrong-admin")))
            await stub.Configure(pb.ConfigureRequest(api_key="sk-rotated-abcdefghijklmnopq"), metadata=ADMIN)
        server.proc.send_signal(signal.SIGTERM)
        output = server.output()
    finally:
        server.close()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    calls = [entry for entry in lines if entry.get("logger") == "gpt_grpc.access"]
    # Nothing else per call at the default level (no HTTP-library request lines).
    assert [e for e in lines if not e["logger"].startswith("gpt_grpc")] == []
    assert [c["method"] for c in calls] == [
        "ChatCompletion",
        "CountTokens",
        "ChatCompletion",
        "Configure",
        "Configure",
    ]
    ok = calls[0]
    assert ok["status"] == "OK" and ok["request_id"] == "req-from-caller-1" and ok["model"] == "gpt-4o-mini"
    assert ok["prompt_tokens"] == reply.usage.prompt_tokens and ok["cost_usd"] == pytest.approx(reply.cost_usd)
    assert ok["attempts"] == 1 and ok["latency_ms"] > 0
    assert calls[1]["request_id"] == generated_id
    assert (calls[2]["status"], calls[2]["reason"]) == ("UNAUTHENTICATED", "UPSTREAM_AUTHENTICATION_FAILED")
    assert (calls[3]["status"], calls[3]["reason"]) == ("UNAUTHENTICATED", "ADMIN_TOKEN_INVALID")
    assert calls[4]["client"] == "admin"
    for secret in (TEST_KEY, ADMIN_TOKEN, "sk-rotated-abcdefghijklmnopq", "wrong-admin"):
        assert secret not in output


# -- TLS and mutual TLS -----------------------------------------------------------------


async def test_tls(standin: Standin, pki: Path) -> None:
    config = ServerConfig(
        port=0,
        admin_token=ADMIN_TOKEN,
        upstream=fast_upstream(standin.base_url),
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
    )
    gw = await start_gateway(config)
    try:
        async with AsyncClient(gw.target, root_certificates=pki / "ca.pem", timeout=10) as client:
            assert await client.chat_completion(user_message="secure") == "Echo: secure"
        async with AsyncClient(gw.target, timeout=3) as plaintext:
            with pytest.raises(GatewayError) as refused:
                await plaintext.count_tokens("x")
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        async with AsyncClient(gw.target, root_certificates=pki / "rogue-ca.pem", timeout=3) as untrusting:
            with pytest.raises(GatewayError):
                await untrusting.count_tokens("x")
    finally:
        await stop_gateway(gw)


async def test_mutual_tls(standin: Standin, pki: Path) -> None:
    config = ServerConfig(
        port=0,
        admin_token=ADMIN_TOKEN,
        upstream=fast_upstream(standin.base_url),
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        tls_client_ca=str(pki / "ca.pem"),
    )
    gw = await start_gateway(config)
    try:
        ok = AsyncClient(
            gw.target,
            root_certificates=pki / "ca.pem",
            private_key=pki / "client.key",
            certificate_chain=pki / "client.pem",
            timeout=10,
        )
        async with ok as client:
            assert await client.chat_completion(user_message="mutual") == "Echo: mutual"
        for key, chain in ((None, None), (pki / "rogue-client.key", pki / "rogue-client.pem")):
            async with AsyncClient(
                gw.target, root_certificates=pki / "ca.pem", private_key=key, certificate_chain=chain, timeout=3
            ) as refused:
                with pytest.raises(GatewayError) as info:
                    await refused.count_tokens("x")
                assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert standin.requests[-1].body["messages"][-1]["content"] == "mutual"
    finally:
        await stop_gateway(gw)


# -- per-client keys, limits and budgets ---------------------------------------------------


@pytest.fixture
async def keyed(standin: Standin, tmp_path: Path) -> AsyncIterator[Gateway]:
    config = ServerConfig(
        port=0,
        admin_token=ADMIN_TOKEN,
        upstream=fast_upstream(standin.base_url),
        db_path=str(tmp_path / "clients.db"),
        metrics_port=0,
    )
    gw = await start_gateway(config)
    try:
        yield gw
    finally:
        await stop_gateway(gw)


async def create(gw: Gateway, name: str, **limits: object) -> str:
    reply = await gw.stub.CreateClient(
        pb.CreateClientRequest(name=name, limits=pb.ClientLimits(**limits)),  # type: ignore[arg-type]
        metadata=ADMIN,
    )
    assert reply.client.name == name and reply.token.startswith(reply.client.token_prefix)
    return reply.token


async def test_data_plane_is_open_until_a_client_exists(keyed: Gateway, standin: Standin) -> None:
    assert (await keyed.stub.ChatCompletion(HI)).content == "Echo: hello metrics"
    token = await create(keyed, "billing")
    missing = details(await fail(keyed.stub.ChatCompletion(HI)))
    assert (missing.code, missing.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CLIENT_TOKEN_MISSING")
    wrong = details(await fail(keyed.stub.ChatCompletion(HI, metadata=bearer("gptk_wrong"))))
    assert (wrong.code, wrong.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CLIENT_TOKEN_INVALID")
    assert len(standin.requests) == 1  # refusals never touch the upstream
    assert (await keyed.stub.ChatCompletion(HI, metadata=bearer(token))).content == "Echo: hello metrics"
    assert (await keyed.stub.ChatCompletion(HI, metadata=ADMIN)).content == "Echo: hello metrics"
    # A client token is not an admin token.
    denied = details(await fail(keyed.stub.Configure(pb.ConfigureRequest(default_model="x"), metadata=bearer(token))))
    assert denied.reason == "ADMIN_TOKEN_INVALID"
    listed = await keyed.stub.ListClients(pb.ListClientsRequest(), metadata=ADMIN)
    assert [c.name for c in listed.clients] == ["billing"]
    assert token not in str(listed)
    await keyed.stub.RevokeClient(pb.RevokeClientRequest(name="billing"), metadata=ADMIN)
    revoked = details(await fail(keyed.stub.ChatCompletion(HI, metadata=bearer(token))))
    assert revoked.reason == "CLIENT_TOKEN_INVALID"


async def test_request_rate_limit_with_retry_info(keyed: Gateway) -> None:
    token = await create(keyed, "chatty", requests_per_minute=2)
    other = await create(keyed, "quiet")
    for _ in range(2):
        await keyed.stub.ChatCompletion(HI, metadata=bearer(token))
    limited = details(await fail(keyed.stub.ChatCompletion(HI, metadata=bearer(token))))
    assert (limited.code, limited.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CLIENT_RATE_LIMITED")
    assert limited.retry_info is not None
    delay = limited.retry_info.retry_delay.seconds + limited.retry_info.retry_delay.nanos / 1e9
    assert 50 < delay <= 60
    assert (await keyed.stub.ChatCompletion(HI, metadata=bearer(other))).content  # others unaffected


async def test_token_rate_limit(keyed: Gateway) -> None:
    token = await create(keyed, "wordy", tokens_per_minute=100)
    # Prompt + max_tokens is reserved at admission: a call that alone may exceed the limit can never run.
    too_big = details(
        await fail(
            keyed.stub.ChatCompletion(
                pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="hi", max_tokens=200),
                metadata=bearer(token),
            )
        )
    )
    assert (too_big.code, too_big.fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["max_tokens"])
    small = pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="hello metrics", max_tokens=30)
    used = 0
    for _ in range(20):
        try:
            reply = await keyed.stub.ChatCompletion(small, metadata=bearer(token))
        except grpc.aio.AioRpcError as err:
            limited = details(err)
            break
        used += reply.usage.total_tokens
    else:
        raise AssertionError("the token limit never refused a call")
    assert limited.reason == "CLIENT_RATE_LIMITED" and limited.retry_info is not None
    assert 0 < used <= 100


async def test_budget_refuses_with_quota_failure_and_usage_survives_restart(standin: Standin, tmp_path: Path) -> None:
    db = str(tmp_path / "clients.db")
    config = ServerConfig(port=0, admin_token=ADMIN_TOKEN, upstream=fast_upstream(standin.base_url), db_path=db)
    gw = await start_gateway(config)
    try:
        # Each call reserves prompt + max_tokens (~$0.00002 here): the budget holds about two reservations.
        spender = await create(gw, "spender", budget_usd=0.00005, budget_period=pb.BUDGET_PERIOD_DAY)
        saver = await create(gw, "saver", budget_usd=1.0, budget_period=pb.BUDGET_PERIOD_MONTH)
        capped = pb.ChatCompletionRequest(model="gpt-4o-mini", user_message="hello metrics", max_tokens=30)
        costs: list[float] = []
        for _ in range(30):
            try:
                costs.append((await gw.stub.ChatCompletion(capped, metadata=bearer(spender))).cost_usd)
            except grpc.aio.AioRpcError as refused:
                err = details(refused)
                break
        else:
            raise AssertionError("the budget never refused a call")
        assert len(costs) >= 2 and 0 < sum(costs) <= 0.00005
        assert (err.code, err.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "CLIENT_BUDGET_EXCEEDED")
        quota = err.quota_violations
        assert quota == [("client:spender", quota[0][1])] and "daily budget" in quota[0][1]
        assert (await gw.stub.ChatCompletion(HI, metadata=bearer(saver))).content  # unaffected
        own = await gw.stub.GetUsage(pb.GetUsageRequest(), metadata=bearer(spender))
        assert own.client == "spender" and own.total.requests == len(costs)
        forbidden = details(await fail(gw.stub.GetUsage(pb.GetUsageRequest(client="saver"), metadata=bearer(spender))))
        assert forbidden.reason == "CLIENT_FORBIDDEN"
        before = await gw.stub.GetUsage(pb.GetUsageRequest(client="spender"), metadata=ADMIN)
    finally:
        await stop_gateway(gw)
    gw = await start_gateway(config)  # a restart on the same database
    try:
        after = await gw.stub.GetUsage(pb.GetUsageRequest(client="spender"), metadata=ADMIN)
        assert after == before
        assert after.total.cost_usd == pytest.approx(sum(costs))
        still_over = details(await fail(gw.stub.ChatCompletion(capped, metadata=bearer(spender))))
        assert still_over.reason == "CLIENT_BUDGET_EXCEEDED"
        clients = (await gw.stub.ListClients(pb.ListClientsRequest(), metadata=ADMIN)).clients
        assert {c.name: c.period_spend_usd > 0 for c in clients} == {"saver": True, "spender": True}
    finally:
        await stop_gateway(gw)


async def test_repeated_auth_failures_are_rate_limited(keyed: Gateway, standin: Standin) -> None:
    token = await create(keyed, "victim")
    for _ in range(10):
        err = details(await fail(keyed.stub.ChatCompletion(HI, metadata=bearer("gptk_guess"))))
        assert err.reason == "CLIENT_TOKEN_INVALID"
    braked = details(await fail(keyed.stub.ChatCompletion(HI, metadata=bearer("gptk_guess"))))
    assert (braked.code, braked.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "AUTH_RATE_LIMITED")
    assert braked.retry_info is not None
    bad_admin = details(await fail(keyed.stub.ListClients(pb.ListClientsRequest(), metadata=bearer("x" * 40))))
    assert bad_admin.reason == "AUTH_RATE_LIMITED"
    assert standin.requests == []  # nothing went upstream
    # A token that verifies is never refused by the brake: the valid client and the admin
    # behind the same host (NAT, a sidecar, a proxy) keep working; only failures are slowed.
    assert (await keyed.stub.ChatCompletion(HI, metadata=bearer(token))).content == "Echo: hello metrics"
    assert (await keyed.stub.ChatCompletion(HI, metadata=ADMIN)).content == "Echo: hello metrics"
    assert (await keyed.stub.ListClients(pb.ListClientsRequest(), metadata=ADMIN)).clients
    again = details(await fail(keyed.stub.ChatCompletion(HI, metadata=bearer("gptk_guess"))))
    assert again.reason == "AUTH_RATE_LIMITED"


async def test_admin_client_rpcs_validate(keyed: Gateway) -> None:
    bad = details(
        await fail(
            keyed.stub.CreateClient(
                pb.CreateClientRequest(name="bad name!", limits=pb.ClientLimits(requests_per_minute=0)),
                metadata=ADMIN,
            )
        )
    )
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad.fields) == {"name", "limits.requests_per_minute"}
    await create(keyed, "dup")
    exists = details(await fail(keyed.stub.CreateClient(pb.CreateClientRequest(name="dup"), metadata=ADMIN)))
    assert (exists.code, exists.reason) == (grpc.StatusCode.ALREADY_EXISTS, "CLIENT_EXISTS")
    missing = details(await fail(keyed.stub.RevokeClient(pb.RevokeClientRequest(name="nobody"), metadata=ADMIN)))
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "CLIENT_NOT_FOUND")
    updated = await keyed.stub.UpdateClient(
        pb.UpdateClientRequest(name="dup", limits=pb.ClientLimits(requests_per_minute=5)), metadata=ADMIN
    )
    assert updated.client.limits.requests_per_minute == 5
    no_admin = details(await fail(keyed.stub.ListClients(pb.ListClientsRequest())))
    assert no_admin.reason == "ADMIN_TOKEN_MISSING"
    await asyncio.sleep(0)


async def test_refused_calls_are_not_usage(keyed: Gateway) -> None:
    token = await create(keyed, "one", requests_per_minute=1)
    await keyed.stub.ChatCompletion(HI, metadata=bearer(token))
    refused = details(await fail(keyed.stub.ChatCompletion(HI, metadata=bearer(token))))
    assert refused.reason == "CLIENT_RATE_LIMITED"
    usage = await keyed.stub.GetUsage(pb.GetUsageRequest(client="one"), metadata=ADMIN)
    assert [(m.model, m.requests, m.failed_requests) for m in usage.models] == [("gpt-4o-mini", 1, 0)]
