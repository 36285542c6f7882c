"""The scrubber: every form of every key out of upstream text, and nothing else touched."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpt_grpc.upstream.failures import from_http
from gpt_grpc.upstream.scrub import (
    KNOWN_CLEAN_MAX_CHARS,
    MAX_CODE_CHARS,
    MAX_ID_CHARS,
    MAX_KNOWN_CLEAN,
    MAX_MESSAGE_CHARS,
    MAX_REMEMBERED_KEYS,
    PARTIAL_CHARS,
    REDACTED,
    Scrubber,
    Secrets,
    bounded,
)

KEY = "sk-proj/Ab+cd=ef&gh~0123456789XYZ"
OTHER = "sk-second-key-9876543210abcdefgh"


@pytest.mark.parametrize(
    "echo",
    [
        KEY,
        f"Bearer {KEY}",
        f"Authorization: Bearer {KEY}",
        quote(KEY),
        quote(KEY, safe=""),
        quote(KEY, safe="").lower(),
        quote_plus(KEY),
        KEY.upper(),
        json.dumps(KEY)[1:-1].replace("/", "\\/"),
        KEY[: PARTIAL_CHARS + 3],  # an echo the upstream cut short
        KEY[-(PARTIAL_CHARS + 2) :],  # an echo that kept only the end
        OTHER,
    ],
    ids=[
        "bare",
        "bearer",
        "header",
        "quote",
        "quote-all",
        "quote-lower",
        "quote-plus",
        "upper",
        "json",
        "head",
        "tail",
        "2nd",
    ],
)
def test_every_form_of_every_key_is_removed(echo: str) -> None:
    scrub = Scrubber([KEY, OTHER])
    out = scrub(f"before {echo} after")
    assert out.startswith("before ") and out.endswith(" after") and REDACTED in out
    for secret in (KEY, OTHER):
        assert secret not in out and secret[3 : 3 + PARTIAL_CHARS] not in out


def test_text_without_a_key_is_left_alone() -> None:
    scrub = Scrubber([KEY])
    for text in ("", "Incorrect API key provided: sk-pro****9XYZ.", "rate limited", KEY[: PARTIAL_CHARS - 1]):
        assert scrub(text) == text


@given(st.text(max_size=200))
def test_scrubbing_never_adds_a_key_and_is_idempotent(text: str) -> None:
    scrub = Scrubber([KEY])
    once = scrub(text + KEY + text)
    assert KEY not in once and scrub(once) == once


def test_short_keys_are_removed_whole() -> None:
    assert Scrubber(["ollama"])("key ollama refused") == f"key {REDACTED} refused"


def test_secrets_remember_the_newest_keys_within_a_bound() -> None:
    first = "sk-first-" + hashlib.sha256(b"first").hexdigest()[:24]
    secrets = Secrets([first])
    keys = [f"sk-{i:02d}-" + hashlib.sha256(bytes([i])).hexdigest()[:24] for i in range(MAX_REMEMBERED_KEYS)]
    scrub = secrets.add(*keys)
    assert scrub is secrets.scrubber
    assert all(scrub(k) == REDACTED for k in keys)
    assert scrub(first) == first  # the oldest was let go
    assert secrets.add(keys[-1]) is scrub  # nothing new: the same scrubber


def test_bounded_cuts_and_makes_printable() -> None:
    assert bounded("a\nb\x00c\u200bd", 100) == "a b c d"
    assert bounded("x" * 10, 4) == "xxxx..."


def test_an_http_error_is_scrubbed_and_bounded_in_every_field() -> None:
    body = {"error": {"message": f"bad key {KEY}\n" + "m" * 2000, "code": f"Bearer {KEY}" + "c" * 500}}
    err = from_http(401, {"x-request-id": f"req-{quote(KEY, safe='')}" + "r" * 500}, body, scrubber=Scrubber([KEY]))
    for text in (err.message, err.upstream_code or "", err.request_id or ""):
        assert KEY not in text and quote(KEY, safe="") not in text and REDACTED in text
        assert text.isprintable()
    assert len(err.upstream_code or "") <= MAX_CODE_CHARS + 3 and len(err.request_id or "") <= MAX_ID_CHARS + 3
    assert len(err.message) <= len("upstream returned HTTP 401: ") + MAX_MESSAGE_CHARS + 3


def test_texts_found_clean_are_remembered_within_a_bound_and_secrets_never_are() -> None:
    scrub = Scrubber([KEY])
    for _ in range(3):  # a text with a key is scrubbed every time, never remembered as clean
        assert scrub(f"model {KEY}") == f"model {REDACTED}"
    assert scrub("gpt-4o-mini-2024-07-18") == "gpt-4o-mini-2024-07-18"
    for i in range(MAX_KNOWN_CLEAN * 2):  # many distinct clean texts: the memory stays bounded
        text = f"chatcmpl-{i:032d}"
        assert scrub(text) == text
    assert 0 < len(scrub._clean) <= MAX_KNOWN_CLEAN
    long_clean = "x" * (KNOWN_CLEAN_MAX_CHARS + 1)
    assert scrub(long_clean) == long_clean
    assert long_clean not in scrub._clean
    assert scrub(f"{KEY[:PARTIAL_CHARS]} after a clean call") == f"{REDACTED} after a clean call"
