"""Model prices: data from ``genai-prices``, operator overrides on top.

Prices come from the ``genai-prices`` package's bundled snapshot (OpenAI provider),
which works offline: nothing is fetched at import or when pricing. Its opt-in
auto-updater (``genai_prices.UpdatePrices``) is never started here. Should the
host process start it, a ``Pricing`` built afterwards sees the updated snapshot.

An operator override file (JSON) adds models genai-prices lacks, or replaces its
prices (negotiated rates)::

    {"models": {"my-model": {"input_usd_per_million": 1.0,
                             "cached_input_usd_per_million": 0.5,
                             "output_usd_per_million": 2.0}}}

``cached_input_usd_per_million`` is optional (absent or null: cached prompt tokens
are billed as input). Overrides win. An override keyed by a model family id also
applies to that family's dated names (an override for ``gpt-4o-mini`` prices
``gpt-4o-mini-2024-07-18``), because genai-prices resolves both to the same model.
The file is validated when loaded; any problem raises :class:`PricingConfigError`
naming the file.

Lookups are on the request hot path, so resolved prices are cached per model name
(bounded LRU, so arbitrary client-supplied names cannot grow it without limit). For
the few models whose genai-prices entry changes on a date, the cached price is
re-resolved when the UTC day changes (time-of-day prices: on every call).

Long-context tiers: some recent models (gpt-5.4 and later) are priced by tier
(all tokens at a higher rate once the prompt exceeds a threshold). ``price_for``
reports the base tier; ``cost_usd`` applies the tiers exactly as genai-prices does.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
from genai_prices import data_snapshot
from genai_prices import types as gp_types

from .chat import MAX_MODEL_CHARS

SECONDS_PER_DAY = 86_400.0

__all__ = ["ModelPrice", "PriceEntry", "Pricing", "PricingConfigError"]

_MILLION = Decimal(1_000_000)
_OVERRIDE_KEYS = frozenset({"input_usd_per_million", "cached_input_usd_per_million", "output_usd_per_million"})
_REQUIRED_OVERRIDE_KEYS = ("input_usd_per_million", "output_usd_per_million")
_CACHE_SIZE = 4096


class PricingConfigError(Exception):
    """The price override file is unreadable or invalid."""


@dataclass(frozen=True)
class ModelPrice:
    input_usd_per_million: Decimal
    cached_input_usd_per_million: Decimal | None  # None: cached tokens are billed as input
    output_usd_per_million: Decimal
    source: str  # "genai-prices 0.2.3" or "override:<path>"


# A rate as genai-prices stores it: base price and (threshold, price) tiers, where a
# tier applies to *all* tokens once the prompt has more than ``threshold`` tokens.
_Tiers = tuple[tuple[int, Decimal], ...]


@dataclass(frozen=True)
class PriceEntry:
    """A model's resolved prices: what one call looks up once and bills with."""

    price: ModelPrice
    input_tiers: _Tiers = ()
    cached_tiers: _Tiers = ()
    output_tiers: _Tiers = ()
    valid_on: date | None = None  # None: valid forever; else only on this UTC day

    def cost_usd(self, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0) -> float:
        """USD cost of one request (see `Pricing.cost_usd`)."""
        if prompt_tokens < 0 or completion_tokens < 0 or cached_prompt_tokens < 0:
            raise ValueError(
                f"token counts must be non-negative: prompt={prompt_tokens}, "
                f"completion={completion_tokens}, cached={cached_prompt_tokens}"
            )
        price = self.price
        cached = min(cached_prompt_tokens, prompt_tokens)
        input_rate = _rate(price.input_usd_per_million, self.input_tiers, prompt_tokens)
        if price.cached_input_usd_per_million is None:
            cached_rate = input_rate
        else:
            cached_rate = _rate(price.cached_input_usd_per_million, self.cached_tiers, prompt_tokens)
        output_rate = _rate(price.output_usd_per_million, self.output_tiers, prompt_tokens)
        total = (
            (prompt_tokens - cached) * input_rate + cached * cached_rate + completion_tokens * output_rate
        ) / _MILLION
        return float(total)


def _rate(base: Decimal, tiers: _Tiers, prompt_tokens: int) -> Decimal:
    for threshold, price in reversed(tiers):
        if prompt_tokens > threshold:
            return price
    return base


class Pricing:
    """Per-model prices: overrides (if any) first, then genai-prices' bundled data."""

    def __init__(
        self,
        override_path: str | os.PathLike[str] | None = None,
        *,
        provider_id: str = "openai",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        # The UTC day prices are resolved for, and the instant it ends: a date-dependent
        # price is looked up again from the next day on (one float compare a call until then).
        self._today = date.min
        self._today_ends = float("-inf")
        self._overrides: dict[str, PriceEntry] = {}
        if override_path is not None:
            self._overrides = _load_overrides(override_path)
        self._snapshot = data_snapshot.get_snapshot()
        try:
            self._provider = self._snapshot.find_provider(None, provider_id, None)
        except LookupError as exc:
            raise PricingConfigError(f"genai-prices has no provider {provider_id!r}") from exc
        self._source = f"genai-prices {genai_prices.__version__}"
        self._cache: OrderedDict[str, PriceEntry | None] = OrderedDict()
        self._lock = threading.Lock()

    def price_for(self, model: str) -> ModelPrice | None:
        """Prices for ``model`` (base tier), or ``None`` if unknown."""
        entry = self.entry(model)
        return entry.price if entry is not None else None

    def cost_usd(
        self, model: str, prompt_tokens: int, completion_tokens: int, cached_prompt_tokens: int = 0
    ) -> float | None:
        """USD cost of one request, or ``None`` if the model is unknown.

        ``cached_prompt_tokens`` are part of ``prompt_tokens`` (as OpenAI reports
        usage) and are billed at the cached rate, the rest at the input rate.
        Cached tokens above ``prompt_tokens`` (inconsistent upstream usage) are
        clamped to ``prompt_tokens``. Negative counts raise ``ValueError``.
        """
        entry = self.entry(model)
        if entry is None:
            return None
        return entry.cost_usd(prompt_tokens, completion_tokens, cached_prompt_tokens)

    # ------------------------------------------------------------------ lookup

    def entry(self, model: str) -> PriceEntry | None:
        """The resolved prices of ``model`` (``None`` if unknown): what a call resolves once."""
        override = self._overrides.get(model)
        if override is not None:
            return override
        today = self._utc_today()
        with self._lock:
            if model in self._cache:
                entry = self._cache[model]
                if entry is None or entry.valid_on is None or entry.valid_on == today:
                    self._cache.move_to_end(model)
                    return entry
        entry = self._resolve(model, today)
        if len(model) > MAX_MODEL_CHARS:  # a name no valid request has: not worth a cache slot of its size
            return entry
        with self._lock:
            self._cache[model] = entry
            self._cache.move_to_end(model)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return entry

    def _utc_today(self) -> date:
        now = self._clock()
        if not self._today_ends - SECONDS_PER_DAY <= now < self._today_ends:
            t = datetime.fromtimestamp(now, UTC)
            self._today = t.date()
            self._today_ends = datetime(t.year, t.month, t.day, tzinfo=UTC).timestamp() + SECONDS_PER_DAY
        return self._today

    def _resolve(self, model: str, today: date) -> PriceEntry | None:
        info = self._provider.find_model(model, all_providers=self._snapshot.providers)
        if info is None:
            return None
        override = self._overrides.get(info.id)
        if override is not None:
            return override
        prices = info.get_prices(datetime.now(tz=UTC))
        input_base, input_tiers = _split(prices.input_mtok)
        output_base, output_tiers = _split(prices.output_mtok)
        cached_base, cached_tiers = _split(prices.cache_read_mtok)
        if input_base is None or output_base is None:
            return None  # not priced per text token (audio, images, ...)
        return PriceEntry(
            price=ModelPrice(
                input_usd_per_million=input_base,
                cached_input_usd_per_million=cached_base,
                output_usd_per_million=output_base,
                source=self._source,
            ),
            input_tiers=input_tiers,
            cached_tiers=cached_tiers,
            output_tiers=output_tiers,
            valid_on=_valid_on(info, today),
        )


def _valid_on(info: gp_types.ModelInfo, today: date) -> date | None:
    """How long a resolved price may be cached: forever, for the day, or not at all."""
    if isinstance(info.prices, gp_types.ModelPrice):
        return None
    if any(isinstance(p.constraint, gp_types.TimeOfDateConstraint) for p in info.prices):
        return date.min  # time-of-day pricing (off-peak rates): re-resolve on every call
    return today  # start-date pricing: re-resolve when the UTC day changes


def _split(value: Any) -> tuple[Decimal | None, _Tiers]:
    if isinstance(value, Decimal):
        return value, ()
    if isinstance(value, gp_types.TieredPrices):
        tiers = tuple(sorted((tier.start, tier.price) for tier in value.tiers))
        return value.base, tiers
    return None, ()


# ---------------------------------------------------------------------- overrides


def _load_overrides(path: str | os.PathLike[str]) -> dict[str, PriceEntry]:
    where = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PricingConfigError(f"{where}: cannot read price overrides: {exc}") from exc

    def reject_constant(name: str) -> Any:
        raise PricingConfigError(f"{where}: {name} is not a valid price")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise PricingConfigError(f"{where}: duplicate key {key!r}")
            result[key] = value
        return result

    try:
        data = json.loads(
            text,
            parse_float=Decimal,
            parse_int=Decimal,
            parse_constant=reject_constant,
            object_pairs_hook=no_duplicates,
        )
    except json.JSONDecodeError as exc:
        raise PricingConfigError(f"{where}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict) or set(data) != {"models"}:
        raise PricingConfigError(f'{where}: expected an object with exactly one key "models"')
    models = data["models"]
    if not isinstance(models, dict):
        raise PricingConfigError(f'{where}: "models" must be an object mapping model name to prices')

    source = f"override:{where}"
    entries: dict[str, PriceEntry] = {}
    for model, spec in models.items():
        at = f"{where}: models[{model!r}]"
        if not model.strip():
            raise PricingConfigError(f"{at}: model name must be non-empty")
        if not isinstance(spec, dict):
            raise PricingConfigError(f"{at}: must be an object")
        unknown = set(spec) - _OVERRIDE_KEYS
        if unknown:
            raise PricingConfigError(f"{at}: unknown keys {sorted(unknown)}; allowed: {sorted(_OVERRIDE_KEYS)}")
        missing = [key for key in _REQUIRED_OVERRIDE_KEYS if key not in spec]
        if missing:
            raise PricingConfigError(f"{at}: missing {missing}")
        cached = spec.get("cached_input_usd_per_million")
        entries[model] = PriceEntry(
            price=ModelPrice(
                input_usd_per_million=_price(at, "input_usd_per_million", spec["input_usd_per_million"]),
                cached_input_usd_per_million=(
                    None if cached is None else _price(at, "cached_input_usd_per_million", cached)
                ),
                output_usd_per_million=_price(at, "output_usd_per_million", spec["output_usd_per_million"]),
                source=source,
            )
        )
    return entries


def _price(at: str, key: str, value: Any) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise PricingConfigError(f"{at}: {key} must be a number, got {value!r}")
    if value < 0:
        raise PricingConfigError(f"{at}: {key} must not be negative, got {value}")
    return value
