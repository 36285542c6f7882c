"""Fault model for the stand-in upstream.

A :class:`Fault` describes one misbehaviour the stand-in applies to one chat request.
Faults are plain data (JSON-serialisable with the same field names) so that the HTTP
control API, the CLI and in-process tests all speak the same language.
"""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Kinds that answer with an OpenAI-shaped HTTP error: kind -> (status, code).
ERROR_KINDS: dict[str, tuple[int, str | None]] = {
    "rate_limit": (429, "rate_limit_exceeded"),
    "insufficient_quota": (429, "insufficient_quota"),
    "server_error": (500, None),
    "bad_gateway": (502, None),
    "unavailable": (503, None),
    "context_length_exceeded": (400, "context_length_exceeded"),
    "model_not_found": (404, "model_not_found"),
    "unauthorized": (401, "invalid_api_key"),
    "forbidden": (403, "unsupported_country_region_territory"),
}

# Kinds that change the transport or the timing rather than the status code.
BEHAVIOUR_KINDS: frozenset[str] = frozenset(
    {
        "http_error",
        "hang",
        "slow",
        "slow_stream",
        "drop_mid_stream",
        "truncated_sse",
        "invalid_json",
        "html_error",
        # Status 200 with an HTML page for a body, to a unary or a stream request alike.
        "html_ok",
        "no_usage",
        "reset",
        # Hostile upstreams (issue 9): the first echoes the caller's Authorization header
        # (and the key URL-encoded) into an HTTP error's message, code and X-Request-Id
        # (status from `status`, default 401); the second does the same in an SSE
        # `{"error": ...}` event sent after `after_chunks` content deltas (0: before any).
        "echo_key",
        "echo_key_sse",
        # An answer of OVERSIZED_BYTES: a unary body with Content-Length, the same body
        # chunked (no length announced), or a stream of that many bytes of deltas.
        "oversized",
        "oversized_chunked",
    }
)

FAULT_KINDS: frozenset[str] = BEHAVIOUR_KINDS | frozenset(ERROR_KINDS)

# What a seeded random campaign uses when no kinds are given: the transient failures a
# resilient gateway is expected to retry or surface cleanly (no "hang": it would stall a
# benchmark for the client's whole deadline).
DEFAULT_RANDOM_KINDS: tuple[str, ...] = (
    "rate_limit",
    "server_error",
    "bad_gateway",
    "unavailable",
    "drop_mid_stream",
    "reset",
)

# Default seconds for timing faults drawn at random (a Fault built by hand defaults to 0).
DEFAULT_RANDOM_DELAY = 0.05

# Applied to a "rate_limit" fault that names no retry hint, so clients see a realistic header.
DEFAULT_RATE_LIMIT_RETRY_AFTER = 0.05

# What the "oversized" faults send: more than any gateway should relay in one answer.
OVERSIZED_BYTES = 20 * 1024 * 1024

# Hung requests give up after this long so a leaked client cannot pin a handler forever.
HANG_LIMIT_SECONDS = 120.0

_FIELD_NAMES: frozenset[str] = frozenset()  # filled in below, after the dataclass exists


@dataclass(frozen=True)
class Fault:
    """One misbehaviour applied to one ``/v1/chat/completions`` request."""

    kind: str
    status: int | None = None
    code: str | None = None
    retry_after: float | None = None
    retry_after_ms: int | None = None
    delay: float = 0.0
    after_chunks: int = 2
    message: str | None = None
    # Send `retry_after` in Retry-After's HTTP-date form (RFC 9110 section 10.2.3): the
    # instant that many seconds from now, rounded up to the whole second the form holds.
    retry_after_http_date: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {sorted(FAULT_KINDS)}")
        if self.kind == "http_error" and self.status is None:
            raise ValueError("fault kind 'http_error' needs a status")
        if self.delay < 0:
            raise ValueError("delay must be >= 0")
        if self.after_chunks < 0:
            raise ValueError("after_chunks must be >= 0")

    def to_json(self) -> dict[str, Any]:
        """Return the fault as a JSON-ready dict (same field names)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        """Build a fault from a JSON object; unknown fields are rejected."""
        unknown = set(data) - _FIELD_NAMES
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        if "kind" not in data:
            raise ValueError("a fault needs a 'kind'")
        return cls(**dict(data))

    def error_status(self) -> tuple[int, str | None] | None:
        """(status, code) when this fault answers with an HTTP error, else None."""
        if self.kind == "http_error":
            assert self.status is not None
            return self.status, self.code
        preset = ERROR_KINDS.get(self.kind)
        if preset is None:
            return None
        status, code = preset
        return (self.status or status), (self.code if self.code is not None else code)

    def retry_hints(self) -> tuple[float | None, int | None]:
        """(retry-after seconds, retry-after-ms) headers to send, if any."""
        if self.kind == "rate_limit" and self.retry_after is None and self.retry_after_ms is None:
            return DEFAULT_RATE_LIMIT_RETRY_AFTER, None
        return self.retry_after, self.retry_after_ms


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Fault))


class FaultPlan:
    """Decides which fault (if any) the next chat request gets.

    A FIFO queue of explicit faults is consumed first, one per request; once it is empty
    a seeded random campaign (if enabled) injects faults on a fraction of requests.
    """

    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()
        self._rate = 0.0
        self._kinds: tuple[str, ...] = ()
        self._delay = DEFAULT_RANDOM_DELAY
        self._rng = random.Random(0)
        self.applied: dict[str, int] = {}

    @property
    def pending(self) -> int:
        """Number of explicitly queued faults not yet consumed."""
        return len(self._queue)

    def enqueue(self, faults: Iterable[Fault]) -> None:
        """Append faults to the FIFO queue."""
        self._queue.extend(faults)

    def set_random(
        self,
        rate: float,
        kinds: Iterable[str] | None = None,
        seed: int | None = None,
        delay: float = DEFAULT_RANDOM_DELAY,
    ) -> None:
        """Inject a uniformly chosen kind on ``rate`` of requests; rate 0 turns it off."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within [0, 1]")
        chosen = tuple(kinds) if kinds is not None else DEFAULT_RANDOM_KINDS
        for kind in chosen:
            if kind not in FAULT_KINDS or kind == "http_error":
                # http_error needs a status, which a random draw cannot supply.
                raise ValueError(f"fault kind {kind!r} cannot be drawn at random")
        if rate > 0 and not chosen:
            raise ValueError("random faults need at least one kind")
        self._rate = rate
        self._kinds = chosen
        self._delay = delay
        self._rng = random.Random(seed)

    def next(self) -> Fault | None:
        """The fault for the next request (None = answer normally); counts it as applied."""
        fault: Fault | None = None
        if self._queue:
            fault = self._queue.popleft()
        elif self._rate > 0:
            # Always draw twice per request so the sequence depends only on the seed and
            # the request count, not on which kinds happened to be picked.
            roll = self._rng.random()
            kind = self._rng.choice(self._kinds)
            if roll < self._rate:
                fault = Fault(kind=kind, delay=self._delay)
        if fault is not None:
            self.applied[fault.kind] = self.applied.get(fault.kind, 0) + 1
        return fault

    def clear(self) -> None:
        """Drop queued faults and turn random faults off (applied counts are kept)."""
        self._queue.clear()
        self._rate = 0.0
        self._kinds = ()
