"""Prices from genai-prices' bundled data, operator overrides, hot-path caching."""

from __future__ import annotations

import json
import socket
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from genai_prices import Usage, calc_price

from gpt_grpc.pricing import ModelPrice, Pricing, PricingConfigError

GENAI_SOURCE = f"genai-prices {genai_prices.__version__}"
REQUIRED_MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "o1",
    "o1-mini",
    "o3-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "o3",
    "o4-mini",
]


def _blocked(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"network access attempted: {args!r}")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _blocked)
    monkeypatch.setattr(socket, "create_connection", _blocked)
    monkeypatch.setattr(socket, "getaddrinfo", _blocked)


@pytest.fixture(scope="module")
def pricing() -> Pricing:
    return Pricing()


def _write(tmp_path: Path, data: Any, name: str = "prices.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def _expected(price: ModelPrice, prompt: int, completion: int, cached: int) -> float:
    cached_rate = price.cached_input_usd_per_million
    if cached_rate is None:
        cached_rate = price.input_usd_per_million
    total = (
        (prompt - cached) * price.input_usd_per_million
        + cached * cached_rate
        + completion * price.output_usd_per_million
    ) / Decimal(1_000_000)
    return float(total)


@pytest.mark.parametrize("model", REQUIRED_MODELS)
def test_required_models_are_priced(pricing: Pricing, model: str) -> None:
    price = pricing.price_for(model)
    assert price is not None, model
    assert price.input_usd_per_million > 0
    assert price.output_usd_per_million > 0
    assert price.cached_input_usd_per_million is not None
    assert 0 < price.cached_input_usd_per_million <= price.input_usd_per_million
    assert price.source == GENAI_SOURCE


def test_hand_checked_figures(pricing: Pricing) -> None:
    # OpenAI list prices, as in genai-prices' data.
    assert pricing.price_for("gpt-4o-mini") == ModelPrice(
        Decimal("0.15"), Decimal("0.075"), Decimal("0.6"), GENAI_SOURCE
    )
    assert pricing.price_for("gpt-4o") == ModelPrice(Decimal("2.5"), Decimal("1.25"), Decimal("10"), GENAI_SOURCE)
    # 1M prompt + 1M completion tokens of gpt-4o-mini: $0.15 + $0.60.
    assert pricing.cost_usd("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    # 1000 prompt (400 cached) + 500 completion on gpt-4o:
    # 600 * 2.5e-6 + 400 * 1.25e-6 + 500 * 10e-6 = 0.0015 + 0.0005 + 0.005
    assert pricing.cost_usd("gpt-4o", 1000, 500, cached_prompt_tokens=400) == pytest.approx(0.007)


@pytest.mark.parametrize(
    ("model", "prompt", "completion", "cached"),
    [
        ("gpt-4o", 1200, 300, 0),
        ("gpt-4o-mini", 50_000, 2_000, 20_000),
        ("gpt-4.1-nano", 10, 1, 10),
        ("o1", 4_000, 12_000, 1_024),
        ("o3-mini", 100_000, 50_000, 0),
        ("gpt-5", 7, 8_000, 0),
        ("gpt-5-nano", 123_456, 7_890, 100_000),
        ("o4-mini", 0, 0, 0),
    ],
)
def test_costs_follow_the_price_data(pricing: Pricing, model: str, prompt: int, completion: int, cached: int) -> None:
    price = pricing.price_for(model)
    assert price is not None
    expected = _expected(price, prompt, completion, cached)
    assert pricing.cost_usd(model, prompt, completion, cached) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # and genai-prices itself agrees
    usage = Usage(input_tokens=prompt, cache_read_tokens=cached, output_tokens=completion)
    reference = calc_price(usage, model, provider_id="openai").total_price
    assert pricing.cost_usd(model, prompt, completion, cached) == pytest.approx(float(reference), abs=1e-12)


def test_cached_tokens_billed_at_cached_rate(pricing: Pricing) -> None:
    full = pricing.cost_usd("gpt-4.1", 10_000, 0)
    half_cached = pricing.cost_usd("gpt-4.1", 10_000, 0, cached_prompt_tokens=5_000)
    assert full is not None and half_cached is not None
    # gpt-4.1: $2 input, $0.50 cached input per million
    assert full == pytest.approx(0.02)
    assert half_cached == pytest.approx(5_000 * 2e-6 + 5_000 * 0.5e-6)


def test_no_cached_price_bills_cached_as_input(pricing: Pricing) -> None:
    price = pricing.price_for("gpt-4-turbo")
    assert price is not None and price.cached_input_usd_per_million is None
    assert pricing.cost_usd("gpt-4-turbo", 1000, 0, cached_prompt_tokens=1000) == pricing.cost_usd(
        "gpt-4-turbo", 1000, 0
    )


def test_cached_above_prompt_is_clamped_and_negative_rejected(pricing: Pricing) -> None:
    assert pricing.cost_usd("gpt-4o", 100, 0, cached_prompt_tokens=500) == pricing.cost_usd(
        "gpt-4o", 100, 0, cached_prompt_tokens=100
    )
    with pytest.raises(ValueError):
        pricing.cost_usd("gpt-4o", -1, 0)


@pytest.mark.parametrize(
    ("dated", "family"),
    [
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("o4-mini-2025-04-16", "o4-mini"),
    ],
)
def test_dated_names_resolve_to_family(pricing: Pricing, dated: str, family: str) -> None:
    assert pricing.price_for(dated) is not None
    assert pricing.price_for(dated) == pricing.price_for(family)


def test_long_context_tiers_match_genai_prices(pricing: Pricing) -> None:
    # gpt-5.4 is tier-priced in the data: above 272k prompt tokens every token costs more.
    small = calc_price(Usage(input_tokens=1000, output_tokens=10), "gpt-5.4", provider_id="openai")
    large = calc_price(
        Usage(input_tokens=300_000, cache_read_tokens=100_000, output_tokens=1000),
        "gpt-5.4",
        provider_id="openai",
    )
    assert pricing.cost_usd("gpt-5.4", 1000, 10) == pytest.approx(float(small.total_price))
    assert pricing.cost_usd("gpt-5.4", 300_000, 1000, 100_000) == pytest.approx(float(large.total_price))


@pytest.mark.parametrize("model", ["llama3:8b", "my-model", "", "gpt-4o-nonexistent-thing"])
def test_unknown_model(pricing: Pricing, model: str) -> None:
    assert pricing.price_for(model) is None
    assert pricing.cost_usd(model, 100, 100) is None


def test_lookups_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    pricing = Pricing()
    calls: list[str] = []
    real = pricing._provider.find_model

    def counting(model_ref: str, **kwargs: Any) -> Any:
        calls.append(model_ref)
        return real(model_ref, **kwargs)

    monkeypatch.setattr(pricing._provider, "find_model", counting)
    for _ in range(3):
        pricing.price_for("gpt-4o")
        pricing.cost_usd("gpt-4o", 1, 1)
        pricing.price_for("unknown-model")
    assert calls == ["gpt-4o", "unknown-model"]


# --------------------------------------------------------------------------- overrides


def test_override_adds_and_wins(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "models": {
                "my-model": {
                    "input_usd_per_million": 1.0,
                    "cached_input_usd_per_million": 0.5,
                    "output_usd_per_million": 2,
                },
                "gpt-4o": {"input_usd_per_million": 2.0, "output_usd_per_million": 8.0},
                "gpt-4o-mini": {
                    "input_usd_per_million": 0.1,
                    "cached_input_usd_per_million": None,
                    "output_usd_per_million": 0.3,
                },
            }
        },
    )
    pricing = Pricing(path)
    source = f"override:{path}"
    assert pricing.price_for("my-model") == ModelPrice(Decimal("1.0"), Decimal("0.5"), Decimal("2"), source)
    assert pricing.cost_usd("my-model", 1000, 1000, 400) == pytest.approx((600 * 1.0 + 400 * 0.5 + 1000 * 2) / 1e6)
    assert pricing.price_for("gpt-4o") == ModelPrice(Decimal("2.0"), None, Decimal("8.0"), source)
    # An override of a family covers its dated names too.
    assert pricing.price_for("gpt-4o-mini-2024-07-18") == ModelPrice(Decimal("0.1"), None, Decimal("0.3"), source)
    # Models not overridden keep genai-prices' data.
    o3 = pricing.price_for("o3")
    assert o3 is not None and o3.source == GENAI_SOURCE


def test_override_decimal_precision(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"models": {"m": {"input_usd_per_million": 0.1, "output_usd_per_million": 0.3}}}')
    price = Pricing(path).price_for("m")
    assert price is not None and price.input_usd_per_million == Decimal("0.1")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "invalid JSON"),
        ("[]", "exactly one key"),
        ('{"models": {}, "extra": 1}', "exactly one key"),
        ('{"models": []}', "must be an object"),
        ('{"models": {"m": 3}}', "must be an object"),
        (
            '{"models": {"m": {"input_usd_per_million": -1, "output_usd_per_million": 1}}}',
            "must not be negative",
        ),
        (
            '{"models": {"m": {"input_usd_per_million": 1, "output_usd_per_million": 1, '
            '"cached_input_usd_per_million": -0.5}}}',
            "must not be negative",
        ),
        (
            '{"models": {"m": {"input_usd_per_million": 1, "output_usd_per_million": 1, "foo": 1}}}',
            "unknown keys",
        ),
        ('{"models": {"m": {"input_usd_per_million": 1}}}', "missing"),
        (
            '{"models": {"m": {"input_usd_per_million": "1", "output_usd_per_million": 1}}}',
            "must be a number",
        ),
        (
            '{"models": {"m": {"input_usd_per_million": true, "output_usd_per_million": 1}}}',
            "must be a number",
        ),
        ('{"models": {"m": {"input_usd_per_million": NaN, "output_usd_per_million": 1}}}', "NaN"),
        (
            '{"models": {"m": {"input_usd_per_million": null, "output_usd_per_million": 1}}}',
            "must be a number",
        ),
        (
            '{"models": {"m": {"input_usd_per_million": 1, "output_usd_per_million": 1}, '
            '"m": {"input_usd_per_million": 2, "output_usd_per_million": 2}}}',
            "duplicate key",
        ),
        ('{"models": {" ": {"input_usd_per_million": 1, "output_usd_per_million": 1}}}', "non-empty"),
    ],
)
def test_override_validation(tmp_path: Path, content: str, problem: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(PricingConfigError) as info:
        Pricing(path)
    assert str(path) in str(info.value)
    assert problem in str(info.value)


def test_missing_override_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(PricingConfigError, match=r"nope\.json"):
        Pricing(path)


def test_date_dependent_prices_are_re_resolved_each_day(monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt

    now = [dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)]
    pricing = Pricing(clock=lambda: now[0].timestamp())
    calls: list[str] = []
    real = pricing._provider.find_model

    def counting(model_ref: str, **kwargs: Any) -> Any:
        calls.append(model_ref)
        return real(model_ref, **kwargs)

    monkeypatch.setattr(pricing._provider, "find_model", counting)
    # o3's price changed on 2025-06-10 in the data: a start-date conditional price.
    pricing.price_for("o3")
    pricing.price_for("o3")
    pricing.price_for("gpt-4o")
    pricing.price_for("gpt-4o")
    assert calls == ["o3", "gpt-4o"]
    now[0] = dt.datetime(2026, 1, 2, 0, 1, tzinfo=dt.UTC)
    pricing.price_for("o3")
    pricing.price_for("gpt-4o")  # fixed price: still cached
    assert calls == ["o3", "gpt-4o", "o3"]
