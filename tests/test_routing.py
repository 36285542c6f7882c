"""Several upstreams, unit by unit: the routing choice (a pure function), the circuit breaker (an injected
clock), the upstreams file's one validation, and a route's order of failover and fallback models."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpt_grpc.egress import EgressPolicy
from gpt_grpc.errors import GatewayError, Reason
from gpt_grpc.settings import Settings, SettingsUpdate, apply
from gpt_grpc.upstream.breaker import Breaker, Failure, State
from gpt_grpc.upstream.endpoints import azure_endpoint
from gpt_grpc.upstream.routing import Candidate, Routers, choose
from gpt_grpc.upstream.scrub import NO_SECRETS, Secrets
from gpt_grpc.upstreams import (
    BreakerPolicy,
    UpstreamSet,
    UpstreamsFileError,
    UpstreamSpec,
    load_file,
    parse_configured,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------- choose

A = Candidate(0, priority=1, weight=3, in_flight=0)
B = Candidate(1, priority=1, weight=1, in_flight=0)
C = Candidate(2, priority=2, weight=100, in_flight=0)


@pytest.mark.parametrize(
    ("candidates", "draw", "chosen"),
    [
        ([], 0.5, None),  # nobody may take the call
        ([C], 0.99, 2),  # a lone candidate, whatever the draw
        ([A, C], 0.99, 0),  # the lower priority number goes first, whatever the weights
        ([C, B], 0.0, 1),
        ([A, B, C], 0.0, 0),  # equal priority, nobody in flight: by weight (3:1) with the draw
        ([A, B, C], 0.74, 0),
        ([A, B, C], 0.76, 1),
        ([A, B, C], 0.999, 1),
        # the weights decide the share whatever the load: a busy heavy upstream still gets its 3/4
        ([Candidate(0, 1, 3, 5), Candidate(1, 1, 1, 0)], 0.5, 0),
        ([Candidate(0, 1, 3, 0), Candidate(1, 1, 1, 5)], 0.9, 1),
        # among equal weights, the fewest calls in flight, whatever the draw
        ([Candidate(0, 1, 1, 2), Candidate(1, 1, 1, 1)], 0.0, 1),
        ([Candidate(0, 1, 1, 0), Candidate(1, 1, 1, 1)], 0.99, 0),
        ([Candidate(0, 1, 3, 5), Candidate(1, 1, 1, 2), Candidate(2, 1, 1, 0)], 0.7, 2),
        ([Candidate(0, 1, 3, 5), Candidate(1, 1, 1, 2), Candidate(2, 1, 1, 0)], 0.5, 0),
        # equal weights and load: the draw
        ([Candidate(0, 1, 1, 0), Candidate(1, 1, 1, 0)], 0.2, 0),
        ([Candidate(0, 1, 1, 0), Candidate(1, 1, 1, 0)], 0.7, 1),
    ],
)
def test_choose(candidates: list[Candidate], draw: float, chosen: int | None) -> None:
    result = choose(candidates, draw)
    assert (result.index if result is not None else None) == chosen


def test_choose_splits_by_weight_over_draws() -> None:
    picks = [choose([A, B], (i + 0.5) / 1000) for i in range(1000)]
    assert sum(1 for p in picks if p is A) == 750


# ----------------------------------------------------------------------------- breaker

POLICY = BreakerPolicy(
    failure_threshold=3, failure_ratio=0.5, window=10, min_calls=10, probe_interval=5, close_after=2,
    quota_cooldown=100, auth_cooldown=50,
)  # fmt: skip


def test_breaker_opens_after_consecutive_failures_and_probes_once_per_interval() -> None:
    clock = Clock()
    b = Breaker(POLICY, clock)
    for _ in range(2):
        assert b.available() and not b.acquire()
        b.failure(False)
    assert b.state is State.CLOSED
    b.success(False)  # a success resets the run
    for _ in range(3):
        b.failure(False)
    assert b.state is State.OPEN and not b.available()
    assert b.retry_in() == pytest.approx(5)
    clock.now += 4.9
    assert not b.available()
    clock.now += 0.1
    assert b.available()
    assert b.acquire()  # the probe
    assert b.state is State.HALF_OPEN
    assert not b.available()  # one probe at a time
    b.failure(True)  # the probe failed: open for another interval
    assert b.state is State.OPEN and not b.available()
    clock.now += 5
    assert b.acquire()
    b.success(True)
    assert b.state is State.HALF_OPEN and b.available()  # the next probe goes at once
    assert b.acquire()
    b.success(True)
    assert b.state is State.CLOSED  # close_after = 2
    assert b.opened == 2  # at the threshold, and again when the first probe failed


def test_breaker_opens_on_failure_ratio_over_the_window() -> None:
    clock = Clock()
    b = Breaker(POLICY, clock)
    for i in range(10):  # alternate: never 3 in a row, but half of 10 failed
        clock.now += 0.1
        if i % 2:
            b.failure(False)
        else:
            b.success(False)
        if i < 9:
            assert b.state is State.CLOSED, i
    assert b.state is State.OPEN
    assert b.error_rate() == pytest.approx(0.5)


def test_breaker_window_forgets_old_attempts() -> None:
    clock = Clock()
    b = Breaker(POLICY, clock)
    for _ in range(9):
        b.failure(False)
        b.success(False)
    clock.now += 20  # the window is 10 s
    assert b.window.counts() == (0, 0)
    assert b.error_rate() == 0


@pytest.mark.parametrize(("kind", "cooldown"), [(Failure.AUTH, 50), (Failure.QUOTA, 100)])
def test_breaker_refused_key_or_quota_takes_it_out_for_the_cooldown(kind: Failure, cooldown: float) -> None:
    clock = Clock()
    b = Breaker(POLICY, clock)
    b.failure(False, kind)  # once is enough
    assert b.state is State.OPEN
    assert b.retry_in() == pytest.approx(cooldown)
    b.failure(False, Failure.TRANSIENT)  # a late failure never shortens it
    assert b.retry_in() == pytest.approx(cooldown)


def test_breaker_cancelled_probe_frees_the_slot_and_busy_is_not_broken() -> None:
    clock = Clock()
    b = Breaker(POLICY, clock)
    for _ in range(3):
        b.failure(False)
    clock.now += 5
    assert b.acquire()
    b.release(True)  # the probe's caller went away: another may probe
    assert b.available()
    closed = Breaker(POLICY, clock)
    closed.mark_busy(2.0)  # Retry-After
    assert closed.busy() and closed.state is State.CLOSED and closed.retry_in() == pytest.approx(2)
    clock.now += 2
    assert not closed.busy()


def test_breaker_that_never_opens_only_counts() -> None:
    b = Breaker(POLICY, Clock(), opens=False)
    for _ in range(50):
        b.failure(False)
    assert b.state is State.CLOSED and b.available() and b.error_rate() == 1.0


# ----------------------------------------------------------------------------- the file

FILE = """
[[upstream]]
name = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "TEST_OPENAI_KEY"
priority = 1
weight = 1
models = ["gpt-4o*", "o3-mini"]

[[upstream]]
name = "azure-east"
kind = "azure"
base_url = "https://my-resource.openai.azure.com"
api_version = "2024-10-21"
api_key_file = "{key_file}"
deployments = {{ "gpt-4o" = "prod-gpt4o" }}
priority = 2

[fallbacks]
"gpt-4o" = ["gpt-4o-mini"]

[breaker]
probe_interval = 0.5
"""
OPENAI_KEY = "sk-test-openai-0123456789abcdef"
AZURE_KEY = "azure-key-0123456789abcdef0123"


def write(tmp_path: Path, text: str) -> Path:
    key_file = tmp_path / "azure.key"
    key_file.write_text(AZURE_KEY + "\n")
    path = tmp_path / "upstreams.toml"
    path.write_text(text.format(key_file=key_file))
    return path


def test_the_issues_file_loads(tmp_path: Path) -> None:
    s = load_file(str(write(tmp_path, FILE)), {"TEST_OPENAI_KEY": OPENAI_KEY})
    openai, azure = s.upstreams
    assert (openai.name, openai.kind, openai.api_key, openai.priority, openai.weight) == (
        "openai", "openai", OPENAI_KEY, 1, 1.0,
    )  # fmt: skip
    assert openai.serves("gpt-4o-mini") and openai.serves("o3-mini") and not openai.serves("gpt-4.1")
    assert azure.api_key == AZURE_KEY and azure.serves("gpt-4o") and not azure.serves("gpt-4o-mini")
    assert azure.deployment("gpt-4o") == "prod-gpt4o"
    assert s.fallbacks_of("gpt-4o") == ("gpt-4o-mini",)
    assert openai.breaker.probe_interval == 0.5 and openai.breaker.failure_threshold == 5  # [breaker] defaults
    assert OPENAI_KEY not in repr(s) and AZURE_KEY not in repr(s)


def test_bad_file_names_every_bad_key(tmp_path: Path) -> None:
    bad = """
[[upstream]]
name = "a b"
base_url = "ftp://x"
api_key_env = "UNSET_VARIABLE_FOR_TEST"
weight = 0
priority = "high"
colour = "red"

[[upstream]]
name = "z"
kind = "azure"
base_url = "https://z.example"
api_key = "inline"

[fallbacks]
"gpt-4o" = "gpt-4o-mini"
"""
    with pytest.raises(UpstreamsFileError) as info:
        load_file(str(write(tmp_path, bad)), {})
    message = str(info.value)
    for named in (
        "upstream[0].name",
        "upstream[0].base_url",
        "upstream[0].api_key_env: the environment variable UNSET_VARIABLE_FOR_TEST is not set",
        "upstream[0].weight",
        "upstream[0].priority",
        "upstream[0].colour: unknown key",
        "upstream[1].api_key: keys are not written in the file",
        "upstream[1].deployments",
        "fallbacks.gpt-4o",
    ):
        assert named in message, named
    assert "inline" not in message


def test_duplicate_names_and_not_toml(tmp_path: Path) -> None:
    twice = '[[upstream]]\nname="a"\nbase_url="http://127.0.0.1:1/v1"\napi_key_env="K"\n' * 2
    with pytest.raises(UpstreamsFileError, match=r"upstream\[1\]\.name: 'a' is used by another upstream"):
        load_file(str(write(tmp_path, twice)), {"K": "k" * 20})
    with pytest.raises(UpstreamsFileError, match="not valid TOML"):
        load_file(str(write(tmp_path, "[[upstream]\n")), {})
    with pytest.raises(UpstreamsFileError, match="cannot read"):
        load_file(str(tmp_path / "missing.toml"), {})


def test_configure_keeps_a_key_only_while_the_origin_stays() -> None:
    current = parse_configured(
        {"upstream": [{"name": "a", "base_url": "https://a.example/v1", "api_key": "key-a-0123456789"}]}
    )
    same = parse_configured({"upstream": [{"name": "a", "base_url": "https://a.example/v2"}]})
    kept, problems = same.checked(None, current)
    assert problems == [] and kept.upstreams[0].api_key == "key-a-0123456789"
    moved = parse_configured({"upstream": [{"name": "a", "base_url": "https://b.example/v1"}]})
    _, problems = moved.checked(None, current)
    assert [p.field for p in problems] == ["upstreams.upstreams[0].api_key"]
    new = parse_configured({"upstream": [{"name": "n", "base_url": "https://n.example"}]})
    _, problems = new.checked(None, current)
    assert [p.description for p in problems] == ["must be given for a new upstream"]


def test_egress_policy_holds_for_every_upstream() -> None:
    s = parse_configured(
        {
            "upstream": [
                {"name": "ok", "base_url": "http://127.0.0.1:9/v1", "api_key": "k" * 20},
                {"name": "meta", "base_url": "http://169.254.169.254/v1", "api_key": "k" * 20},
                {"name": "plain", "base_url": "http://example.com/v1", "api_key": "k" * 20},
            ]
        }
    )
    with pytest.raises(GatewayError) as info:
        apply(Settings(), SettingsUpdate(upstreams=s), EgressPolicy())
    assert [v.field for v in info.value.field_violations] == [
        "upstreams.upstreams[1].base_url",
        "upstreams.upstreams[2].base_url",
    ]
    with pytest.raises(GatewayError) as info:
        apply(Settings(), SettingsUpdate(upstreams=s), EgressPolicy(allowed_hosts=frozenset({"127.0.0.1"})))
    assert "not in the operator's --allowed-upstream-hosts" in info.value.field_violations[-1].description


def test_azure_endpoint_url_and_header() -> None:
    spec = UpstreamSpec(
        name="az", kind="azure", base_url="https://r.openai.azure.com", api_key="azkey-0123456789",
        api_version="2024-10-21", deployments=(("gpt-4o", "prod-gpt4o"),),
    )  # fmt: skip
    endpoint = azure_endpoint(spec, "prod-gpt4o", NO_SECRETS)
    assert str(endpoint.url) == (
        "https://r.openai.azure.com/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21"
    )
    assert endpoint.headers["api-key"] == "azkey-0123456789"
    assert "authorization" not in endpoint.headers
    assert endpoint.upstream == "az" and endpoint.kind == "azure"


# ----------------------------------------------------------------------------- a route


def _set(*specs: UpstreamSpec, fallbacks: dict[str, tuple[str, ...]] | None = None) -> Settings:
    return Settings(upstreams=UpstreamSet(specs, tuple((fallbacks or {}).items())))


def _spec(name: str, priority: int = 1, models: tuple[str, ...] = ()) -> UpstreamSpec:
    return UpstreamSpec(
        name=name, base_url=f"http://127.0.0.1:1/{name}", api_key=f"key-{name}-0123456789", priority=priority,
        models=models, breaker=POLICY,
    )  # fmt: skip


def _error(reason: Reason, status: int | None = None) -> GatewayError:
    return GatewayError(reason, "failed", http_status=status)


def test_route_tries_each_upstream_then_fallbacks_then_again() -> None:
    secrets = Secrets()
    router = Routers(clock=Clock(), rng=lambda: 0.0)(
        _set(_spec("p", 1), _spec("s", 2), _spec("mini", 1, ("gpt-4o-mini",)), fallbacks={"gpt-4o": ("gpt-4o-mini",)}),
        secrets,
    )
    assert {"key-p-0123456789", "key-s-0123456789"} <= set(secrets._keys)  # the scrubber knows every key
    route = router.route("gpt-4o")
    seen = []
    target = route.take()
    for _ in range(4):
        seen.append((target.upstream, target.model))
        route.failed(target, _error(Reason.UPSTREAM_UNAVAILABLE, 503))
        assert route.goes_on(_error(Reason.UPSTREAM_UNAVAILABLE))
        target = route.take()
    assert seen == [
        ("p", "gpt-4o"),  # priority 1
        ("s", "gpt-4o"),  # then priority 2
        ("p", "gpt-4o-mini"),  # every upstream of gpt-4o failed: the fallback model ("p" serves every model)
        ("mini", "gpt-4o-mini"),
    ]
    assert [a.outcome for a in route.history] == ["UPSTREAM_UNAVAILABLE/503"] * 4


def test_route_refused_key_moves_on_bad_request_does_not() -> None:
    router = Routers(clock=Clock(), rng=lambda: 0.0)(_set(_spec("p", 1), _spec("s", 2)), Secrets())
    route = router.route("m")
    first = route.take()
    route.failed(first, _error(Reason.UPSTREAM_AUTHENTICATION_FAILED, 401))
    assert route.goes_on(_error(Reason.UPSTREAM_AUTHENTICATION_FAILED)) and route.elsewhere()
    second = route.take()
    assert second.upstream == "s"
    route.failed(second, _error(Reason.UPSTREAM_BAD_REQUEST, 400))
    assert not route.goes_on(_error(Reason.UPSTREAM_BAD_REQUEST))
    # "p" is out for its auth cooldown: the next call goes straight to "s"
    assert router.route("m").take().upstream == "s"


def test_route_with_every_breaker_open_says_why() -> None:
    clock = Clock()
    router = Routers(clock=clock)(_set(_spec("p"), _spec("s")), Secrets())
    for _ in range(2):
        route = router.route("m")
        target = route.take()
        route.failed(target, _error(Reason.UPSTREAM_AUTHENTICATION_FAILED, 401))
    with pytest.raises(GatewayError) as info:
        router.route("m").take()
    assert info.value.reason is Reason.UPSTREAM_AUTHENTICATION_FAILED and "p, s" in info.value.message
    router2 = Routers(clock=clock)(_set(_spec("p", models=("a",))), Secrets())
    with pytest.raises(GatewayError) as info:
        router2.route("b").take()
    assert info.value.reason is Reason.MODEL_NOT_ROUTED
