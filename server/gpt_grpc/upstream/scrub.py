"""Secrets out of upstream text: every key the gateway holds, in every form an upstream could echo.

An upstream (a proxy, a misconfigured server, a hostile endpoint) may echo the
Authorization header it received into an error message, an error code, a
request id or an SSE error event. The gateway sends it nothing secret but the
upstream keys, so a `Scrubber` built from every key the gateway holds removes
each of them from such text before it reaches a caller, a log line or a span:

- bare, and so also inside `Bearer <key>`;
- URL-encoded as a path (`quote`), fully (`quote(safe="")`) and as a form
  (`quote_plus`), in either hex case (letters are compared ASCII
  case-insensitively, which also catches a key whose case was changed);
- JSON-escaped (`\\/`, `\\"`), as in a body quoted inside another body;
- cut short: a run of at least `PARTIAL_CHARS` characters that begins like a
  key form (an echo truncated by the upstream) or ends like one.

`Secrets` remembers the keys (those of every upstream, and the last ones
replaced by Configure, bounded) and hands out the scrubber for all of them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

import orjson

# What a removed secret becomes.
REDACTED = "[redacted]"
# A piece of a key this long is treated as the key (a truncated echo); shorter keys match whole.
PARTIAL_CHARS = 12
# Keys remembered after Configure replaced them: an upstream (or a cache in front of
# it) may still echo one, and calls in flight still use it.
MAX_REMEMBERED_KEYS = 16
# Upstream-controlled strings that reach callers and logs are cut to these lengths.
MAX_MESSAGE_CHARS = 500
MAX_CODE_CHARS = 128
MAX_ID_CHARS = 128
# Short texts already found clean, kept per scrubber: a model name, a tier or a fingerprint comes
# back on every answer, and looking it up costs less than the search. Bounded: cleared when full.
MAX_KNOWN_CLEAN = 1024
KNOWN_CLEAN_MAX_CHARS = 64

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _forms(key: str) -> set[str]:
    """The key as an upstream could echo it, ASCII lower-cased."""
    json_escaped = orjson.dumps(key).decode()[1:-1]
    forms = {key, quote(key), quote(key, safe=""), quote_plus(key), json_escaped, json_escaped.replace("/", "\\/")}
    return {form.translate(_ASCII_LOWER) for form in forms if form}


class Scrubber:
    """Removes a fixed set of secrets from text; `scrubber(text)` is the text without them."""

    __slots__ = ("_clean", "_forms", "_pattern", "_shortest")

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms |= _forms(secret)
        # Longest first: where two forms match at one place, the longer one is removed whole.
        self._forms = sorted(forms, key=len, reverse=True)
        anchors: set[str] = set()
        for form in self._forms:
            anchors.add(form[:PARTIAL_CHARS])
            anchors.add(form[-PARTIAL_CHARS:])
        # A text shorter than every anchor holds none (ids, tiers: most of what is scrubbed).
        self._shortest = min((len(a) for a in anchors), default=0)
        self._clean: set[str] = set()
        # One search tells whether any work is needed (the common case: none).
        self._pattern = (
            re.compile("|".join(re.escape(a) for a in sorted(anchors, key=len, reverse=True)), re.IGNORECASE)
            if anchors
            else None
        )

    def __call__(self, text: str) -> str:
        if self._pattern is None or len(text) < self._shortest or text in self._clean:
            return text
        if self._pattern.search(text) is None:
            if len(text) <= KNOWN_CLEAN_MAX_CHARS:
                if len(self._clean) >= MAX_KNOWN_CLEAN:
                    self._clean.clear()
                self._clean.add(text)  # a set: safe from any thread (the sync facade's)
            return text
        return _redact(text, self._spans(text.translate(_ASCII_LOWER)))

    def _spans(self, folded: str) -> list[tuple[int, int]]:
        """Where a form (or a long enough head or tail of one) occurs in the lower-cased text."""
        spans: list[tuple[int, int]] = []
        for form in self._forms:
            size = len(form)
            head = form[:PARTIAL_CHARS]
            at = folded.find(head)
            while at >= 0:
                end = at + len(head)
                while end < len(folded) and end - at < size and folded[end] == form[end - at]:
                    end += 1
                spans.append((at, end))
                at = folded.find(head, end)
            if size <= PARTIAL_CHARS:
                continue  # the head is the whole form
            tail = form[-PARTIAL_CHARS:]
            at = folded.find(tail)
            while at >= 0:
                start = at  # extend backwards while the text goes on matching the form
                while start > 0 and at - start + PARTIAL_CHARS < size:
                    if folded[start - 1] != form[size - PARTIAL_CHARS - (at - start) - 1]:
                        break
                    start -= 1
                spans.append((start, at + PARTIAL_CHARS))
                at = folded.find(tail, at + PARTIAL_CHARS)
        return spans


def _redact(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return text
    spans.sort()
    out: list[str] = []
    kept = 0
    start, end = spans[0]
    for s, e in spans[1:]:
        if s <= end:
            end = max(end, e)
            continue
        out += (text[kept:start], REDACTED)
        kept, start, end = end, s, e
    out += (text[kept:start], REDACTED, text[end:])
    return "".join(out)


NO_SECRETS = Scrubber(())


class Secrets:
    """Every upstream key the gateway holds or held lately; the scrubber for all of them.

    Thread-safe (the sync `GPT` facade configures from any thread).
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, None] = {}  # insertion-ordered: the oldest is dropped first
        self._scrubber = NO_SECRETS
        self.add(*keys)

    def add(self, *keys: str | None) -> Scrubber:
        """Remember these keys (the newest are kept past MAX_REMEMBERED_KEYS); the scrubber for all."""
        with self._lock:
            changed = False
            for key in keys:
                if key:
                    changed |= key not in self._keys
                    self._keys.pop(key, None)
                    self._keys[key] = None
            while len(self._keys) > MAX_REMEMBERED_KEYS:
                del self._keys[next(iter(self._keys))]
                changed = True
            if changed:
                self._scrubber = Scrubber(self._keys)
            return self._scrubber

    @property
    def scrubber(self) -> Scrubber:
        return self._scrubber


def bounded(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, every non-printable character (newlines too) a space."""
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else " " for c in text)


def scrubbed(text: str | None, scrubber: Scrubber, limit: int) -> str | None:
    """Upstream-controlled text made fit for a caller and a log: secrets out first, then bounded."""
    if not text:
        return None
    return bounded(scrubber(text), limit)
