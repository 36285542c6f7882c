"""The optional pieces of an answer, read tolerantly: token logprobs and URL citations.

Both come from the upstream (a whole answer's `choices[0].logprobs` and
`message.annotations`, or a stream chunk's `choices[0].logprobs` and
`delta.annotations`). They are extras: an entry that is not shaped as OpenAI
documents is skipped rather than failing the answer, whose text is intact.
Their size is bounded by the answer's own bound (`client.MAX_ANSWER_BYTES`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..chat import TokenLogprob, TopLogprob, UrlCitation

_BYTE_MAX = 255
_INDEX_MAX = 2**31 - 1  # the proto's int32


def text(value: object) -> str:
    """A string the upstream sent, else empty."""
    return value if isinstance(value, str) else ""


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _bytes(value: object) -> bytes:
    """OpenAI's `bytes`: the token's UTF-8 bytes as a list of integers (or null)."""
    if not isinstance(value, list):
        return b""
    if not all(type(b) is int and 0 <= b <= _BYTE_MAX for b in value):
        return b""
    return bytes(value)


def _list(value: object) -> Sequence[Any]:
    return value if isinstance(value, list) else ()


def logprobs(value: object) -> tuple[TokenLogprob, ...]:
    """The content token logprobs of a choice's `logprobs` object (null when not asked for)."""
    if not isinstance(value, Mapping):
        return ()
    out: list[TokenLogprob] = []
    for entry in _list(value.get("content")):
        if not isinstance(entry, Mapping):
            continue
        logprob = _number(entry.get("logprob"))
        if logprob is None:
            continue
        top = []
        for other in _list(entry.get("top_logprobs")):
            if isinstance(other, Mapping):
                other_logprob = _number(other.get("logprob"))
                if other_logprob is not None:
                    top.append(TopLogprob(text(other.get("token")), other_logprob, _bytes(other.get("bytes"))))
        out.append(TokenLogprob(text(entry.get("token")), logprob, _bytes(entry.get("bytes")), tuple(top)))
    return tuple(out)


def _index(value: object) -> int:
    return value if type(value) is int and 0 <= value <= _INDEX_MAX else 0


def citations(value: object) -> tuple[UrlCitation, ...]:
    """The URL citations of a message's (or delta's) `annotations`."""
    out: list[UrlCitation] = []
    for entry in _list(value):
        if not isinstance(entry, Mapping) or entry.get("type") != "url_citation":
            continue
        cited = entry.get("url_citation")
        if not isinstance(cited, Mapping) or not isinstance(cited.get("url"), str):
            continue
        out.append(
            UrlCitation(
                url=cited["url"],
                title=text(cited.get("title")),
                start_index=_index(cited.get("start_index")),
                end_index=_index(cited.get("end_index")),
            )
        )
    return tuple(out)
