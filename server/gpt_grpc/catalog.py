"""The models the gateway knows about, and the request quirks they need.

The data lives in ``gpt_grpc/data/models.json`` (packaged; loaded with
:mod:`importlib.resources`). Each entry gives the model id, its tiktoken encoding,
context window, maximum output tokens, whether it is a *reasoning* model, whether
it rejects system/developer messages, and *family prefixes* that match dated or
variant names (``o3-mini-2025-01-31`` -> ``o3-mini``).

Name matching (:meth:`Catalog.lookup`) is case-insensitive. Before matching, a
leading ``openai/`` (OpenRouter/LiteLLM style) is removed and a fine-tuned name
``ft:<base>:<org>::<id>`` is reduced to ``<base>``. An exact id wins; otherwise the
longest matching family prefix wins; otherwise the model is unknown (``None``).

:func:`adapt_request` is the single place that rewrites an OpenAI chat request
body for these quirks:

* Reasoning models (o1, o3, o4-mini and the gpt-5 family, plus unknown names
  that look like them, see :func:`is_reasoning_model`) take
  ``max_completion_tokens`` instead of ``max_tokens`` and reject the sampling
  parameters ``temperature``, ``top_p``, ``presence_penalty`` and
  ``frequency_penalty`` (OpenAI's reasoning guide lists them as unsupported;
  the API answers 400 ``unsupported_parameter``/``unsupported_value``). These
  four are dropped. ``logprobs``/``top_logprobs``/``logit_bias`` are left in on
  purpose: a client that asked for log-probabilities should get the API's clear
  error, not silently nothing.
* Models with ``no_system_message`` (o1-mini, o1-preview) reject ``system`` and
  ``developer`` messages. Their text is folded into the next user message,
  prefixed and followed by a blank line, rather than dropped.
* Anything else passes through unchanged.

Two optional keys say what else a model takes: ``verbosity`` (true for the
gpt-5 models that take the ``verbosity`` parameter) and ``image_tokens``, how
OpenAI bills an image for the model (see the vision guide, "Calculating
costs"): ``{"base": B, "tile": T}`` for tile billing (an image costs B, plus T
per 512-pixel tile at detail high or auto) or ``{"patch_multiplier": M}`` for
patch billing (32-pixel patches, at most 1536, times M). A model without it
takes no images, or its figures are not published; `tokens` counts its images
with gpt-4o's figures and marks the count estimated.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "REASONING_REJECTED_PARAMS",
    "Catalog",
    "CatalogError",
    "ImageBilling",
    "ModelSpec",
    "adapt_request",
    "default_catalog",
    "is_reasoning_model",
    "normalize_model_name",
    "takes_reasoning",
    "takes_verbosity",
]

#: Sampling parameters that reasoning models reject; :func:`adapt_request` drops them.
REASONING_REJECTED_PARAMS: tuple[str, ...] = ("temperature", "top_p", "presence_penalty", "frequency_penalty")

_SYSTEM_ROLES = frozenset({"system", "developer"})

_REQUIRED_FIELDS: dict[str, type] = {
    "id": str,
    "encoding": str,
    "context_window": int,
    "max_output_tokens": int,
    "reasoning": bool,
    "no_system_message": bool,
    "prefixes": list,
}
_OPTIONAL_FIELDS: dict[str, type] = {"verbosity": bool, "image_tokens": dict}
_TOP_LEVEL_KEYS = frozenset({"models", "comment"})

# Unknown names that still follow OpenAI's reasoning-model naming: o1*, o3*, o4*
# (as a whole name component, so "o1", "o3-pro", "o4-mini-2025-04-16" but not
# "o10x"), and gpt-5* ("gpt-5", "gpt-5.1", "gpt-5-codex"), except the -chat
# variants, which are ordinary chat models.
_O_SERIES = re.compile(r"^o[134](?:$|-)")
_GPT5 = re.compile(r"^gpt-5(?:$|[.-])")


class CatalogError(ValueError):
    """The catalog data file is missing or invalid."""


@dataclass(frozen=True, slots=True)
class ImageBilling:
    """How a model bills an image: 512-pixel tiles (`base` + `tile` each) or 32-pixel patches (`patch_multiplier`)."""

    base: int = 0
    tile: int = 0
    patch_multiplier: float | None = None  # set: patch billing (base and tile unused)


@dataclass(frozen=True)
class ModelSpec:
    id: str
    encoding: str
    context_window: int
    max_output_tokens: int
    reasoning: bool
    no_system_message: bool
    verbosity: bool = False  # takes the `verbosity` parameter (gpt-5 models)
    image_tokens: ImageBilling | None = None  # None: takes no images, or its figures are unknown


def normalize_model_name(model: str) -> str:
    """Canonical form used for matching: stripped, lower-case, no ``openai/``, fine-tune base."""
    name = model.strip().lower()
    if name.startswith("openai/"):
        name = name[len("openai/") :]
    if name.startswith("ft:"):
        # ft:gpt-4o-mini-2024-07-18:org:suffix:id -> gpt-4o-mini-2024-07-18
        name = name[3:].split(":", 1)[0]
    return name


def _matches_reasoning_pattern(name: str) -> bool:
    if _O_SERIES.match(name):
        return True
    return _matches_gpt5_pattern(name)


def _matches_gpt5_pattern(name: str) -> bool:
    return bool(_GPT5.match(name)) and "-chat" not in name


class Catalog:
    """Known models, loaded once from a JSON data file and validated."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        if path is None:
            source = "gpt_grpc/data/models.json"
            try:
                text = resources.files("gpt_grpc").joinpath("data").joinpath("models.json").read_text(encoding="utf-8")
            except (OSError, ModuleNotFoundError) as exc:
                raise CatalogError(f"{source}: cannot read packaged catalog: {exc}") from exc
        else:
            source = os.fspath(path)
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise CatalogError(f"{source}: cannot read catalog: {exc}") from exc
        self.source = source
        specs, prefixes = _parse(text, source)
        self._by_id: dict[str, ModelSpec] = {spec.id.lower(): spec for spec in specs}
        # Longest prefix first, so the first hit is the most specific family.
        self._prefixes: list[tuple[str, ModelSpec]] = sorted(prefixes, key=lambda p: (-len(p[0]), p[0]))
        self._sorted: list[ModelSpec] = sorted(specs, key=lambda s: s.id)

    def lookup(self, model: str) -> ModelSpec | None:
        """Exact id, else the longest matching family prefix, else ``None``."""
        name = normalize_model_name(model)
        if not name:
            return None
        spec = self._by_id.get(name)
        if spec is not None:
            return spec
        for prefix, candidate in self._prefixes:
            if name.startswith(prefix):
                return candidate
        return None

    def models(self) -> list[ModelSpec]:
        """All known models, sorted by id."""
        return list(self._sorted)


def _parse(text: str, source: str) -> tuple[list[ModelSpec], list[tuple[str, ModelSpec]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{source}: invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError(f"{source}: top level must be an object with a 'models' list")
    unknown = set(data) - _TOP_LEVEL_KEYS
    if unknown:
        raise CatalogError(f"{source}: unknown top-level keys {sorted(unknown)}")
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise CatalogError(f"{source}: 'models' must be a non-empty list")

    specs: list[ModelSpec] = []
    prefixes: list[tuple[str, ModelSpec]] = []
    seen_ids: set[str] = set()
    seen_prefixes: dict[str, str] = {}
    for index, entry in enumerate(entries):
        where = f"{source}: models[{index}]"
        if not isinstance(entry, dict):
            raise CatalogError(f"{where}: must be an object")
        missing = [key for key in _REQUIRED_FIELDS if key not in entry]
        if missing:
            raise CatalogError(f"{where}: missing keys {missing}")
        extra = set(entry) - set(_REQUIRED_FIELDS) - set(_OPTIONAL_FIELDS)
        if extra:
            raise CatalogError(f"{where}: unknown keys {sorted(extra)}")
        for key, expected in _REQUIRED_FIELDS.items():
            value = entry[key]
            # bool is an int subclass: reject True where an int is expected.
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise CatalogError(f"{where}: {key!r} must be {expected.__name__}, got {value!r}")
        for key, expected in _OPTIONAL_FIELDS.items():
            if key in entry and not isinstance(entry[key], expected):
                raise CatalogError(f"{where}: {key!r} must be {expected.__name__}, got {entry[key]!r}")
        model_id: str = entry["id"]
        where = f"{source}: model {model_id!r}"
        if not model_id or model_id != normalize_model_name(model_id):
            raise CatalogError(f"{where}: id must be non-empty, lower-case, without provider prefix")
        if model_id in seen_ids:
            raise CatalogError(f"{where}: duplicate id")
        seen_ids.add(model_id)
        if not entry["encoding"]:
            raise CatalogError(f"{where}: 'encoding' must be non-empty")
        if entry["context_window"] <= 0 or entry["max_output_tokens"] <= 0:
            raise CatalogError(f"{where}: context_window and max_output_tokens must be positive")
        if entry["max_output_tokens"] > entry["context_window"]:
            raise CatalogError(f"{where}: max_output_tokens exceeds context_window")
        spec = ModelSpec(
            id=model_id,
            encoding=entry["encoding"],
            context_window=entry["context_window"],
            max_output_tokens=entry["max_output_tokens"],
            reasoning=entry["reasoning"],
            no_system_message=entry["no_system_message"],
            verbosity=entry.get("verbosity", False),
            image_tokens=_image_billing(entry.get("image_tokens"), where),
        )
        specs.append(spec)
        for prefix in entry["prefixes"]:
            if not isinstance(prefix, str) or not prefix or prefix != prefix.lower():
                raise CatalogError(f"{where}: prefixes must be non-empty lower-case strings, got {prefix!r}")
            if prefix in seen_prefixes:
                raise CatalogError(f"{where}: prefix {prefix!r} already used by {seen_prefixes[prefix]!r}")
            seen_prefixes[prefix] = model_id
            prefixes.append((prefix, spec))
    return specs, prefixes


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _image_billing(data: Mapping[str, Any] | None, where: str) -> ImageBilling | None:
    """``{"base", "tile"}`` (tile billing) or ``{"patch_multiplier"}`` (patch billing)."""
    if data is None:
        return None
    if set(data) == {"base", "tile"} and _positive_int(data["base"]) and _positive_int(data["tile"]):
        return ImageBilling(base=data["base"], tile=data["tile"])
    multiplier = data.get("patch_multiplier")
    if set(data) == {"patch_multiplier"} and isinstance(multiplier, (int, float)) and not isinstance(multiplier, bool):
        if 0 < multiplier < 100:
            return ImageBilling(patch_multiplier=float(multiplier))
    raise CatalogError(
        f"{where}: 'image_tokens' must be {{'base': int > 0, 'tile': int > 0}} or "
        f"{{'patch_multiplier': number in (0, 100)}}, got {data!r}"
    )


@functools.cache
def default_catalog() -> Catalog:
    """The packaged catalog, loaded once per process."""
    return Catalog()


def is_reasoning_model(model: str) -> bool:
    """True for catalogued reasoning models, and for unknown names shaped like o1*/o3*/o4*/gpt-5*.

    Catalogued models answer from the data (so ``gpt-5-chat-latest`` is not a
    reasoning model). Unknown names match by pattern, because OpenAI-compatible
    endpoints expose dated or suffixed names (``o3-2025-04-16``, ``gpt-5.1``); a
    ``-chat`` variant of gpt-5 is not treated as reasoning.
    """
    spec = default_catalog().lookup(model)
    if spec is not None:
        return spec.reasoning
    return _matches_reasoning_pattern(normalize_model_name(model))


def takes_reasoning(spec: ModelSpec | None, model: str) -> bool:
    """Whether a model is a reasoning model: the catalog's flag, else the name's shape (see `is_reasoning_model`)."""
    if spec is not None:
        return spec.reasoning
    return _matches_reasoning_pattern(normalize_model_name(model))


def takes_verbosity(spec: ModelSpec | None, model: str) -> bool:
    """Whether a model takes ``verbosity``: the catalog's flag, else a gpt-5* name (not a -chat variant)."""
    if spec is not None:
        return spec.verbosity
    return _matches_gpt5_pattern(normalize_model_name(model))


def adapt_request(body: dict[str, Any], spec: ModelSpec | None, model: str) -> dict[str, Any]:
    """Return a new request body adapted to the model's quirks; ``body`` is not modified.

    ``spec`` is the catalog entry for ``model`` (or ``None`` if unknown). With no
    spec, only the reasoning-name patterns of :func:`is_reasoning_model` apply.
    Rules (see the module docstring for the reasons):

    * reasoning: ``max_tokens`` becomes ``max_completion_tokens`` (an explicit
      ``max_completion_tokens`` wins; ``max_tokens`` is then just dropped) and
      ``temperature``, ``top_p``, ``presence_penalty``, ``frequency_penalty``
      are removed;
    * no_system_message: each run of system/developer messages is folded into
      the next user message as ``<system text>\\n\\n<user text>``; if no user
      message follows, the run becomes one user message in its place.
    """
    reasoning = takes_reasoning(spec, model)
    no_system = spec.no_system_message if spec is not None else False

    out = dict(body)
    if reasoning:
        if "max_tokens" in out:
            max_tokens = out.pop("max_tokens")
            if out.get("max_completion_tokens") is None and max_tokens is not None:
                out["max_completion_tokens"] = max_tokens
        for key in REASONING_REJECTED_PARAMS:
            out.pop(key, None)
    if no_system:
        messages = out.get("messages")
        if isinstance(messages, list):
            out["messages"] = _fold_system_messages(messages)
    return out


def _content_text(content: Any) -> str:
    """Text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts = [
            part["text"]
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)
        ]
        return "\n".join(texts)
    return ""


def _with_prefix(message: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    folded = dict(message)
    content = message.get("content")
    if isinstance(content, list):
        folded["content"] = [{"type": "text", "text": prefix + "\n\n"}, *content]
    elif isinstance(content, str) and content:
        folded["content"] = prefix + "\n\n" + content
    else:
        folded["content"] = prefix
    return folded


def _fold_system_messages(messages: list[Any]) -> list[Any]:
    result: list[Any] = []
    pending: list[str] = []
    pending_at: int | None = None  # index in result where a standalone user message would go
    for message in messages:
        role = message.get("role") if isinstance(message, Mapping) else None
        if role in _SYSTEM_ROLES:
            text = _content_text(message.get("content"))
            if pending_at is None:
                pending_at = len(result)
            if text:
                pending.append(text)
            continue
        if role == "user" and pending_at is not None:
            if pending:
                message = _with_prefix(message, "\n\n".join(pending))
            pending, pending_at = [], None
        result.append(message)
    if pending_at is not None and pending:
        result.insert(pending_at, {"role": "user", "content": "\n\n".join(pending)})
    return result
