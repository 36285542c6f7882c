"""The model of a call, resolved once: one record that everything after it reads.

`Models.resolve` fills in the default model, looks the name up in the
catalog (encoding, context window, max output, reasoning and no-system
quirks, whether it takes verbosity, how it bills an image) and in the
prices, once per call. The request rewrite
(`catalog.adapt_request`), token counting (`tokens`) and the cost all take
the record instead of looking the name up again.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import tokens
from .catalog import Catalog, ImageBilling, ModelSpec, takes_reasoning, takes_verbosity
from .chat import MAX_MODEL_CHARS, Usage
from .pricing import PriceEntry, Pricing


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """A call's model: its name as sent upstream, and what the gateway knows of it."""

    name: str
    spec: ModelSpec | None  # None: not in the catalog (passed through untouched)
    encoding: tokens.EncodingChoice
    price: PriceEntry | None  # None: no known price (the call's cost is unknown)
    reasoning: bool = False  # takes reasoning_effort and max_completion_tokens (catalog, else the name's shape)
    verbosity: bool = False  # takes verbosity (catalog, else a gpt-5* name)

    @property
    def image_tokens(self) -> ImageBilling | None:
        """How the model bills an image; None when the catalog does not say (counted with gpt-4o's figures)."""
        return self.spec.image_tokens if self.spec is not None else None


# Model names whose records are kept (Models.resolve); a full memo is emptied, not grown.
MAX_LASTING_RECORDS = 1024


class Models:
    """The catalog and the prices, asked once per call."""

    def __init__(self, catalog: Catalog | None = None, pricing: Pricing | None = None) -> None:
        self.catalog = catalog or Catalog()
        self.pricing = pricing or Pricing()
        # Records whose prices hold whatever the date (most): built once, not on every call.
        self._lasting: dict[str, ModelRecord] = {}

    def resolve(self, name: str, *, priced: bool = True) -> ModelRecord:
        """The record of `name` (the default model already filled in); without prices if not `priced`."""
        if priced:
            lasting = self._lasting.get(name)
            if lasting is not None:
                return lasting
        record = self._build(name, priced)
        price = record.price
        if priced and (price is None or price.valid_on is None) and len(name) <= MAX_MODEL_CHARS:
            if len(self._lasting) >= MAX_LASTING_RECORDS:
                self._lasting.clear()  # names are the caller's: bounded
            self._lasting[name] = record
        return record

    def _build(self, name: str, priced: bool) -> ModelRecord:
        spec = self.catalog.lookup(name)
        price = self.pricing.entry(name) if priced else None
        if spec is None:  # not catalogued: what the name's shape tells
            return ModelRecord(
                name=name,
                spec=None,
                encoding=tokens.encoding_choice(name, None),
                price=price,
                reasoning=takes_reasoning(None, name),
                verbosity=takes_verbosity(None, name),
            )
        return ModelRecord(
            name=name,
            spec=spec,
            encoding=tokens.EncodingChoice(spec.encoding, False),
            price=price,
            reasoning=spec.reasoning,
            verbosity=spec.verbosity,
        )

    def cost_usd(self, model: ModelRecord, answered: str, usage: Usage) -> float | None:
        """What the call cost: at the prices of the model that answered, else of the one asked for.

        The upstream may answer with a dated name (`gpt-4o-mini-2024-07-18`) whose
        price differs from the alias asked for; that one is looked up only then.
        """
        price = model.price
        if answered and answered != model.name:
            price = self.pricing.entry(answered) or price
        if price is None:
            return None
        return price.cost_usd(usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens)
