"""Model catalog: data validity, name matching, request adaptation."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from gpt_grpc import tokens
from gpt_grpc.catalog import (
    Catalog,
    CatalogError,
    ImageBilling,
    ModelSpec,
    adapt_request,
    default_catalog,
    is_reasoning_model,
    takes_reasoning,
    takes_verbosity,
)

REQUIRED = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "o1",
    "o1-mini",
    "o3",
    "o3-mini",
    "o4-mini",
    "gpt-4-turbo",
    "gpt-3.5-turbo",
]
REASONING = {"o1", "o1-mini", "o1-preview", "o3", "o3-mini", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano"}


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog()


def spec_of(model: str) -> ModelSpec:
    spec = default_catalog().lookup(model)
    assert spec is not None, model
    return spec


# --------------------------------------------------------------------------- data


def test_required_models_present(catalog: Catalog) -> None:
    ids = [spec.id for spec in catalog.models()]
    assert set(REQUIRED) <= set(ids)
    assert ids == sorted(ids)


def test_packaged_data_is_valid_and_loadable(catalog: Catalog) -> None:
    raw = json.loads(resources.files("gpt_grpc").joinpath("data", "models.json").read_text(encoding="utf-8"))
    assert len(raw["models"]) == len(catalog.models())
    for spec in catalog.models():
        assert 0 < spec.max_output_tokens <= spec.context_window
        tokens.get_encoding(spec.encoding)  # every encoding is available offline
        assert spec.reasoning == (spec.id in REASONING), spec.id


def test_flags(catalog: Catalog) -> None:
    assert spec_of("o1-mini").no_system_message
    assert spec_of("o1-preview").no_system_message
    assert not spec_of("o1").no_system_message
    assert not spec_of("gpt-5-chat-latest").reasoning
    assert spec_of("gpt-4o").encoding == "o200k_base"
    assert spec_of("gpt-4-turbo").encoding == "cl100k_base"
    assert spec_of("gpt-3.5-turbo").encoding == "cl100k_base"


# --------------------------------------------------------------------------- lookup


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("chatgpt-4o-latest", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("gpt-5-nano-2025-08-07", "gpt-5-nano"),
        ("gpt-5-chat-latest", "gpt-5-chat-latest"),
        ("o1-2024-12-17", "o1"),
        ("o1-mini-2024-09-12", "o1-mini"),
        ("o1-preview-2024-09-12", "o1-preview"),
        ("o3-2025-04-16", "o3"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("o4-mini-2025-04-16", "o4-mini"),
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
        ("gpt-4-1106-preview", "gpt-4-turbo"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("GPT-4o", "gpt-4o"),
        ("openai/o3-mini", "o3-mini"),
        ("ft:gpt-4o-mini-2024-07-18:acme:custom:abc123", "gpt-4o-mini"),
    ],
)
def test_lookup(catalog: Catalog, name: str, expected: str) -> None:
    spec = catalog.lookup(name)
    assert spec is not None and spec.id == expected


@pytest.mark.parametrize("name", ["llama3:8b", "", "gpt-4o2", "o2", "claude-3-5-sonnet", "gpt-4.5-preview"])
def test_unknown_lookup(catalog: Catalog, name: str) -> None:
    assert catalog.lookup(name) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("o1", True),
        ("o3-mini-2025-01-31", True),
        ("gpt-5-nano", True),
        ("gpt-5-chat-latest", False),
        ("gpt-4o", False),
        ("gpt-4.1", False),
        # unknown names: patterns
        ("o3-pro", True),
        ("o4-mini-deep-research", True),
        ("o1-2099-01-01", True),
        ("gpt-5.1", True),
        ("gpt-5.2-2025-12-11", True),
        ("gpt-5.1-chat-latest", False),
        ("o10", False),
        ("llama3:8b", False),
        ("gpt-50", False),
    ],
)
def test_is_reasoning_model(name: str, expected: bool) -> None:
    assert is_reasoning_model(name) is expected


# --------------------------------------------------------------------------- adapt_request

SYS = {"role": "system", "content": "Be terse."}
DEV = {"role": "developer", "content": "Answer in French."}
USER = {"role": "user", "content": "Hello"}
ASSISTANT = {"role": "assistant", "content": "Bonjour"}


def _body(**kwargs: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [SYS, USER], **kwargs}


CASES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    (
        "reasoning: max_tokens renamed, sampling params dropped",
        "o3-mini",
        _body(
            max_tokens=100,
            temperature=0.2,
            top_p=0.9,
            presence_penalty=0.1,
            frequency_penalty=0.1,
            stream=True,
        ),
        {"model": "m", "messages": [SYS, USER], "max_completion_tokens": 100, "stream": True},
    ),
    (
        "reasoning: explicit max_completion_tokens wins",
        "gpt-5",
        _body(max_tokens=100, max_completion_tokens=50),
        {"model": "m", "messages": [SYS, USER], "max_completion_tokens": 50},
    ),
    (
        "reasoning: null max_tokens just dropped",
        "o1",
        _body(max_tokens=None),
        {"model": "m", "messages": [SYS, USER]},
    ),
    (
        "reasoning: logprobs left for the API to reject",
        "o4-mini",
        _body(logprobs=True, temperature=1),
        {"model": "m", "messages": [SYS, USER], "logprobs": True},
    ),
    (
        "non-reasoning: untouched",
        "gpt-4o",
        _body(max_tokens=100, temperature=0.2),
        _body(max_tokens=100, temperature=0.2),
    ),
    (
        "gpt-5-chat-latest is not reasoning",
        "gpt-5-chat-latest",
        _body(max_tokens=100, temperature=0.2),
        _body(max_tokens=100, temperature=0.2),
    ),
    (
        "o1-mini: system folded into first user message",
        "o1-mini",
        _body(max_tokens=10),
        {
            "model": "m",
            "messages": [{"role": "user", "content": "Be terse.\n\nHello"}],
            "max_completion_tokens": 10,
        },
    ),
    (
        "o1-mini: system + developer, conversation continues",
        "o1-mini-2024-09-12",
        {"messages": [SYS, DEV, USER, ASSISTANT, {"role": "user", "content": "Merci"}]},
        {
            "messages": [
                {"role": "user", "content": "Be terse.\n\nAnswer in French.\n\nHello"},
                ASSISTANT,
                {"role": "user", "content": "Merci"},
            ]
        },
    ),
    (
        "o1-preview: content parts get a leading text part",
        "o1-preview",
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be terse."}]},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ]
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Be terse.\n\n"}, {"type": "text", "text": "Hi"}],
                },
            ]
        },
    ),
    (
        "o1-mini: system with no user after it becomes a user message",
        "o1-mini",
        {"messages": [USER, ASSISTANT, SYS]},
        {"messages": [USER, ASSISTANT, {"role": "user", "content": "Be terse."}]},
    ),
    (
        "o1 accepts system messages",
        "o1",
        {"messages": [SYS, USER]},
        {"messages": [SYS, USER]},
    ),
    (
        "unknown model passes through",
        "llama3:8b",
        _body(max_tokens=100, temperature=0.2, top_p=0.5),
        _body(max_tokens=100, temperature=0.2, top_p=0.5),
    ),
]


@pytest.mark.parametrize(("model", "body", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_adapt_request(model: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(body)
    result = adapt_request(body, default_catalog().lookup(model), model)
    assert result == expected
    assert result is not body
    assert body == before  # input never mutated


def test_adapt_request_unknown_reasoning_name_without_spec() -> None:
    body = _body(max_tokens=5, temperature=0.3)
    assert adapt_request(body, None, "o3-2099-01-01") == {
        "model": "m",
        "messages": [SYS, USER],
        "max_completion_tokens": 5,
    }
    assert adapt_request(body, None, "mistral-large") == body


# --------------------------------------------------------------------------- bad data


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "models.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


GOOD = {
    "id": "m",
    "encoding": "o200k_base",
    "context_window": 1000,
    "max_output_tokens": 100,
    "reasoning": False,
    "no_system_message": False,
    "prefixes": ["m-"],
}


def test_custom_catalog_file(tmp_path: Path) -> None:
    catalog = Catalog(_write(tmp_path, {"models": [GOOD]}))
    assert catalog.lookup("m-2025-01-01") == ModelSpec("m", "o200k_base", 1000, 100, False, False)


def test_image_figures_and_verbosity_in_a_catalog_file(tmp_path: Path) -> None:
    tiles = {**GOOD, "verbosity": True, "image_tokens": {"base": 85, "tile": 170}}
    patches = {**GOOD, "id": "p", "prefixes": [], "image_tokens": {"patch_multiplier": 1.62}}
    catalog = Catalog(_write(tmp_path, {"models": [tiles, patches]}))
    assert catalog.lookup("m") == ModelSpec("m", "o200k_base", 1000, 100, False, False, True, ImageBilling(85, 170))
    assert catalog.lookup("p").image_tokens == ImageBilling(patch_multiplier=1.62)  # type: ignore[union-attr]


def test_verbosity_and_reasoning_of_unknown_names() -> None:
    assert takes_verbosity(None, "gpt-5.1") and takes_verbosity(None, "openai/gpt-5-2031-01-01")
    assert not takes_verbosity(None, "gpt-5-chat-next") and not takes_verbosity(None, "o3-pro")
    assert takes_verbosity(spec_of("gpt-5-nano"), "gpt-5-nano") and not takes_verbosity(
        spec_of("gpt-5-chat-latest"), "x"
    )
    assert takes_reasoning(None, "o3-pro") and not takes_reasoning(None, "llama3")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("{", "invalid JSON"),
        ({"models": []}, "non-empty list"),
        ({"models": [GOOD], "x": 1}, "unknown top-level"),
        ({"models": [{**GOOD, "extra": 1}]}, "unknown keys"),
        ({"models": [{k: v for k, v in GOOD.items() if k != "encoding"}]}, "missing keys"),
        ({"models": [{**GOOD, "context_window": "big"}]}, "must be int"),
        ({"models": [{**GOOD, "context_window": True}]}, "must be int"),
        ({"models": [{**GOOD, "reasoning": 1}]}, "must be bool"),
        ({"models": [{**GOOD, "max_output_tokens": 5000}]}, "exceeds"),
        ({"models": [GOOD, GOOD]}, "duplicate id"),
        ({"models": [GOOD, {**GOOD, "id": "n"}]}, "already used"),
        ({"models": [{**GOOD, "id": "GPT"}]}, "lower-case"),
        ({"models": [{**GOOD, "verbosity": "yes"}]}, "must be bool"),
        ({"models": [{**GOOD, "image_tokens": [85, 170]}]}, "must be dict"),
        ({"models": [{**GOOD, "image_tokens": {"base": 85}}]}, "'image_tokens' must be"),
        ({"models": [{**GOOD, "image_tokens": {"base": 0, "tile": 170}}]}, "'image_tokens' must be"),
        ({"models": [{**GOOD, "image_tokens": {"base": 85, "tile": True}}]}, "'image_tokens' must be"),
        ({"models": [{**GOOD, "image_tokens": {"base": 85, "tile": 170, "patch_multiplier": 1}}]}, "must be"),
        ({"models": [{**GOOD, "image_tokens": {"patch_multiplier": 0}}]}, "'image_tokens' must be"),
        ({"models": [{**GOOD, "image_tokens": {"patch_multiplier": "1.6"}}]}, "'image_tokens' must be"),
    ],
)
def test_invalid_catalog(tmp_path: Path, data: Any, problem: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(CatalogError) as info:
        Catalog(path)
    assert str(path) in str(info.value) and problem in str(info.value)
