"""Which upstream serves each attempt of a call: failover, weights, breakers and fallback models.

A `Router` is built per settings snapshot by `Routers` (the engine's router
factory), which keeps each upstream's `Health` - its circuit breaker and its
calls in flight - across snapshots as long as the upstream stays the same
(name, kind, URL, key and breaker policy). A router registers the keys of all
its upstreams with `Secrets`, so that every endpoint's scrubber knows every
key the gateway holds.

For each call the engine asks the router for a `Route`, and the route for the
`Target` of every attempt (`take`), telling it how each ended (`failed`, or
the lease's `succeeded` / `release`). The route tries, in order:

1. the upstreams serving the model that this call has not tried yet, then
   those of each fallback model (`[fallbacks]`) in turn;
2. then, as a single upstream is retried today, one already tried (with the
   usual backoff);
3. last, one that asked to be left alone (Retry-After) until then.

Within a step only upstreams whose breaker lets a call through are
candidates, and `choose` - a pure function of the candidates, their
priorities, weights and calls in flight, and a random draw - picks one:
the best priority, then a weighted draw, then among upstreams of equal
weight the fewest calls in flight.

The `OPENAI_BASE_URL` + `OPENAI_API_KEY` shorthand is a set of one upstream,
"default", serving every model, whose breaker never opens (its failures
still show in ListUpstreams as the recent error rate).
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import GatewayError, Reason
from ..settings import Settings
from ..upstreams import BreakerPolicy, UpstreamSet, UpstreamSpec
from .breaker import Breaker, Failure, State
from .endpoints import DEFAULT_UPSTREAM, Endpoint, azure_endpoint, upstream_endpoint
from .scrub import Scrubber, Secrets

Clock = Callable[[], float]
# Model names come from callers: the per-model candidate cache is bounded (cleared when full).
MAX_CACHED_MODELS = 1024
# Failures that say this upstream cannot serve anyone now, not that the request is wrong:
# the call moves to another upstream although the reason is not retryable.
UPSTREAM_SPECIFIC: dict[Reason, Failure] = {
    Reason.UPSTREAM_AUTHENTICATION_FAILED: Failure.AUTH,
    Reason.UPSTREAM_QUOTA_EXCEEDED: Failure.QUOTA,
}
# Ends that tell nothing about the upstream's health (the caller's deadline passed).
_NEUTRAL = frozenset({Reason.DEADLINE_EXCEEDED})


class UpstreamObserver(Protocol):
    """Told about every attempt per upstream and every breaker state change (metrics implement it)."""

    def upstream_attempt(self, upstream: str, outcome: str) -> None:
        """One attempt on `upstream` ended: outcome is "ok" or the failure reason."""

    def upstream_state(self, upstream: str, state: str) -> None:
        """`upstream`'s breaker is now in `state` (closed, open, half_open)."""


# -- the choice: a pure function ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the choice sees of one upstream that may take the call now."""

    index: int  # the upstream's place in the set
    priority: int  # lower goes first
    weight: float  # share among equal priorities
    in_flight: int  # calls it is serving


def choose(candidates: Sequence[Candidate], draw: float) -> Candidate | None:
    """The upstream for the next attempt, from those that may take it now.

    The best (lowest) priority first. Among equal priorities, by weight: a draw
    (uniform in [0, 1)) picks a weight with the chance of its share, so the split
    follows the weights whatever the load. Among upstreams of that same weight,
    the fewest calls in flight; the draw again among those still tied.
    """
    if not candidates:
        return None
    best = min(c.priority for c in candidates)
    top = [c for c in candidates if c.priority == best]
    if len(top) == 1:
        return top[0]
    groups: dict[float, list[Candidate]] = {}
    for c in top:
        groups.setdefault(c.weight, []).append(c)
    point = draw * sum(c.weight for c in top)
    members: list[Candidate] = []
    span = 0.0
    for weight, members in groups.items():
        span = weight * len(members)
        if point < span:
            break
        point -= span
    least = min(c.in_flight for c in members)
    tied = [c for c in members if c.in_flight == least]
    within = min(max(point / span, 0.0), 1.0) if span else 0.0  # where the draw fell in the group, 0..1
    return tied[min(int(within * len(tied)), len(tied) - 1)]


# -- an upstream's health, kept across settings snapshots --------------------------------


class Health:
    """One upstream's breaker and calls in flight."""

    __slots__ = ("breaker", "in_flight", "name")

    def __init__(self, name: str, breaker: Breaker) -> None:
        self.name = name
        self.breaker = breaker
        self.in_flight = 0


class Lease:
    """One attempt's hold on an upstream: its call in flight, and the breaker's probe if it is one."""

    __slots__ = ("_health", "_observer", "_probe", "_released", "_reported")

    def __init__(self, health: Health, probe: bool, observer: UpstreamObserver | None) -> None:
        self._health = health
        self._probe = probe
        self._observer = observer
        self._reported = False
        self._released = False
        health.in_flight += 1

    @property
    def upstream(self) -> str:
        return self._health.name

    def succeeded(self) -> None:
        """The attempt got its answer (a stream: its first delta)."""
        if not self._reported:
            self._reported = True
            breaker = self._health.breaker
            before = breaker.state
            breaker.success(self._probe)
            self._observed("ok", before)

    def failed(self, error: GatewayError) -> None:
        """The attempt (or a stream after its first delta) failed with `error`."""
        breaker = self._health.breaker
        before = breaker.state
        if error.retry_after is not None:
            breaker.mark_busy(error.retry_after)
        kind = UPSTREAM_SPECIFIC.get(error.reason)
        if kind is not None or error.retryable:
            breaker.failure(self._probe and not self._reported, kind or Failure.TRANSIENT, error.reason)
        elif error.reason in _NEUTRAL:
            breaker.release(self._probe and not self._reported)
        elif not self._reported:
            breaker.success(self._probe)  # it answered: the request, not the upstream, was wrong
        self._reported = True
        self._observed(error.reason.value, before)

    def release(self) -> None:
        """The attempt is over (a stream: its last byte, or the caller left); idempotent."""
        if not self._released:
            self._released = True
            self._health.in_flight -= 1
            if not self._reported:
                self._reported = True
                self._health.breaker.release(self._probe)

    def _observed(self, outcome: str, before: State) -> None:
        if self._observer is not None:
            self._observer.upstream_attempt(self._health.name, outcome)
            after = self._health.breaker.state
            if after is not before:
                self._observer.upstream_state(self._health.name, after.value)


# -- the upstreams of one settings snapshot ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: the endpoint, the model asked of it, and the attempt's lease."""

    endpoint: Endpoint
    model: str
    lease: Lease
    named: bool  # one of several configured upstreams: errors name it

    @property
    def upstream(self) -> str:
        return self.endpoint.upstream


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    """One upstream as ListUpstreams shows it."""

    name: str
    kind: str
    base_url: str
    models: tuple[str, ...]
    priority: int
    weight: float
    state: str  # closed, open, half_open
    in_flight: int
    error_rate: float  # failed share of the attempts in the breaker's window
    attempts_in_window: int
    retry_in: float  # seconds until it takes calls again (open or busy); 0 when it does


class _Upstream:
    """An upstream of a snapshot: its spec, health, and endpoint(s)."""

    __slots__ = ("_azure", "endpoint", "health", "index", "spec")

    def __init__(self, index: int, spec: UpstreamSpec, health: Health, scrubber: Scrubber) -> None:
        self.index = index
        self.spec = spec
        self.health = health
        self.endpoint = upstream_endpoint(spec, scrubber) if spec.kind == "openai" else None
        self._azure = {m: azure_endpoint(spec, d, scrubber) for m, d in spec.deployments}

    def endpoint_for(self, model: str) -> Endpoint:
        return self.endpoint if self.endpoint is not None else self._azure[model]


class Router:
    """The upstreams of one settings snapshot; `route` plans a call."""

    def __init__(
        self,
        upstreams: Sequence[_Upstream],
        fallbacks: Callable[[str], tuple[str, ...]],
        *,
        named: bool,
        missing_key: bool = False,
        observer: UpstreamObserver | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._upstreams = tuple(upstreams)
        self._fallbacks = fallbacks
        self.named = named  # several upstreams from a file or Configure: errors name the upstream
        self._missing_key = missing_key
        self._observer = observer
        self._rng = rng
        self._serving: dict[str, tuple[_Upstream, ...]] = {}

    def route(self, model: str) -> Route:
        if self._missing_key:
            raise GatewayError(
                Reason.API_KEY_MISSING, "no upstream API key is configured (set OPENAI_API_KEY or call Configure)"
            )
        return Route(self, model)

    def serving(self, model: str) -> tuple[_Upstream, ...]:
        """The upstreams that take `model`, in the set's order."""
        found = self._serving.get(model)
        if found is None:
            found = tuple(u for u in self._upstreams if u.spec.serves(model))
            if len(self._serving) >= MAX_CACHED_MODELS:
                self._serving.clear()
            self._serving[model] = found
        return found

    def status(self) -> list[UpstreamStatus]:
        out = []
        for u in self._upstreams:
            breaker = u.health.breaker
            total, _failed = breaker.window.counts()
            out.append(
                UpstreamStatus(
                    name=u.spec.name,
                    kind=u.spec.kind,
                    base_url=u.spec.base_url,
                    models=u.spec.listed_models(),
                    priority=u.spec.priority,
                    weight=u.spec.weight,
                    state=breaker.state.value,
                    in_flight=u.health.in_flight,
                    error_rate=breaker.error_rate(),
                    attempts_in_window=total,
                    retry_in=breaker.retry_in(),
                )
            )
        return out


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt of a call, for the error that ends it."""

    upstream: str
    model: str
    outcome: str  # the failure reason, with the HTTP status when there was one


class Route:
    """One call's way through the upstreams; see the module docstring."""

    __slots__ = ("_last", "_models", "_next", "_router", "_tried", "history")

    def __init__(self, router: Router, model: str) -> None:
        self._router = router
        fallbacks = router._fallbacks(model)
        self._models = (model, *fallbacks) if fallbacks else (model,)
        self._tried: set[tuple[int, str]] = set()
        self._last: tuple[_Upstream, str] | None = None
        self._next: tuple[_Upstream, str] | None = None
        self.history: list[AttemptRecord] = []

    @property
    def named(self) -> bool:
        return self._router.named

    def take(self) -> Target:
        """The target of the next attempt, leased; raises GatewayError when no upstream may take it."""
        pick = self._pick()
        if pick is None:
            raise self._none_left()
        upstream, model = pick
        self._tried.add((upstream.index, model))
        self._last = pick
        probe = upstream.health.breaker.acquire()
        lease = Lease(upstream.health, probe, self._router._observer)
        if probe and self._router._observer is not None:
            self._router._observer.upstream_state(upstream.spec.name, State.HALF_OPEN.value)
        return Target(upstream.endpoint_for(model), model, lease, self._router.named)

    def failed(self, target: Target, error: GatewayError) -> None:
        """Attempt on `target` failed with `error`: tell its breaker, note it, plan the next one."""
        target.lease.failed(error)
        target.lease.release()
        status = f"/{error.http_status}" if error.http_status else ""
        self.history.append(AttemptRecord(target.upstream, target.model, f"{error.reason.value}{status}"))
        if self._router.named:
            error.upstream = target.upstream
        self._next = self._pick()

    def goes_on(self, error: GatewayError) -> bool:
        """Whether another attempt may follow `error` (the retry rules decide the rest)."""
        if self._next is None:
            return False
        if error.retryable:
            return True
        return error.reason in UPSTREAM_SPECIFIC and self.elsewhere()

    def elsewhere(self) -> bool:
        """Whether the next attempt goes to another upstream or model than the last (no backoff then)."""
        return self._next is not None and self._next != self._last

    def _pick(self) -> tuple[_Upstream, str] | None:
        router = self._router
        draw = router._rng
        tried = self._tried
        # 1. upstreams not tried yet, for the model and then each fallback model
        for model in self._models:
            fresh = [
                u
                for u in router.serving(model)
                if (u.index, model) not in tried and u.health.breaker.available() and not u.health.breaker.busy()
            ]
            chosen = _choose(fresh, draw)
            if chosen is not None:
                return chosen, model
        # 2. one already tried, as a lone upstream is retried; 3. one that asked to wait (Retry-After)
        for busy_ok in (False, True):
            for model in self._models:
                again = [
                    u
                    for u in router.serving(model)
                    if u.health.breaker.available() and (busy_ok or not u.health.breaker.busy())
                ]
                chosen = _choose(again, draw)
                if chosen is not None:
                    return chosen, model
        return None

    def _none_left(self) -> GatewayError:
        """The error of a call no upstream may take (before any attempt, or between two)."""
        self._next = None
        router = self._router
        serving = [u for m in self._models for u in router.serving(m)]
        if not serving:
            return GatewayError(
                Reason.MODEL_NOT_ROUTED,
                f"no upstream serves the model {self._models[0]!r}: add it to an upstream's models "
                "(or a fallback), or call it by a model an upstream serves",
            )
        out = list({u.index: u for u in serving}.values())
        reasons = {u.health.breaker.last_failure for u in out}
        names = ", ".join(u.spec.name for u in out)
        retry_in = min(u.health.breaker.retry_in() for u in out)
        for u in out:
            self.history.append(AttemptRecord(u.spec.name, "", f"circuit {u.health.breaker.state.value}"))
        if reasons == {Reason.UPSTREAM_AUTHENTICATION_FAILED}:
            return GatewayError(
                Reason.UPSTREAM_AUTHENTICATION_FAILED,
                f"every upstream of {self._models[0]!r} refused its API key lately: {names}",
            )
        if reasons == {Reason.UPSTREAM_QUOTA_EXCEEDED}:
            return GatewayError(
                Reason.UPSTREAM_QUOTA_EXCEEDED, f"every upstream of {self._models[0]!r} is out of quota: {names}"
            )
        return GatewayError(
            Reason.UPSTREAM_UNAVAILABLE,
            f"every upstream of {self._models[0]!r} is failing (circuit breaker open): {names}",
            retry_after=retry_in or None,
        )


def _choose(upstreams: list[_Upstream], draw: Callable[[], float]) -> _Upstream | None:
    if not upstreams:
        return None
    if len(upstreams) == 1:
        return upstreams[0]
    candidates = [Candidate(i, u.spec.priority, u.spec.weight, u.health.in_flight) for i, u in enumerate(upstreams)]
    chosen = choose(candidates, draw())
    return upstreams[chosen.index] if chosen is not None else None


# -- the factory: one router per snapshot, health kept across them -----------------------


RouterFactory = Callable[[Settings, Secrets], Router]

# The shorthand's upstream never opens: a lone upstream has nowhere else to send calls.
_SHORTHAND_BREAKER = BreakerPolicy()


class Routers:
    """Builds the router of each settings snapshot; keeps the health of upstreams that stay."""

    def __init__(
        self,
        *,
        observer: UpstreamObserver | None = None,
        clock: Clock = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.observer = observer
        self._clock = clock
        self._rng = rng
        self._lock = threading.Lock()
        self._health: dict[tuple[object, ...], Health] = {}

    def __call__(self, settings: Settings, secrets: Secrets) -> Router:
        upstreams = settings.upstreams
        if upstreams is None:
            return self._shorthand(settings, secrets)
        return self._set(upstreams, secrets)

    def _shorthand(self, settings: Settings, secrets: Secrets) -> Router:
        scrubber = secrets.add(settings.api_key)
        if not settings.api_key:
            return Router((), lambda m: (), named=False, missing_key=True, observer=self.observer)
        spec = UpstreamSpec(
            name=DEFAULT_UPSTREAM,
            base_url=settings.endpoint,
            api_key=settings.api_key,
            organization=settings.organization,
            project=settings.project,
            breaker=_SHORTHAND_BREAKER,
        )
        (health,) = self._healths([spec], opens=False)
        upstream = _Upstream(0, spec, health, scrubber)
        return Router([upstream], lambda m: (), named=False, observer=self.observer, rng=self._rng)

    def _set(self, upstreams: UpstreamSet, secrets: Secrets) -> Router:
        scrubber = secrets.add(*(u.api_key for u in upstreams.upstreams))
        healths = self._healths(upstreams.upstreams, opens=True)
        built = [
            _Upstream(i, spec, h, scrubber)
            for i, (spec, h) in enumerate(zip(upstreams.upstreams, healths, strict=True))
        ]
        if self.observer is not None:
            for h in healths:
                self.observer.upstream_state(h.name, h.breaker.state.value)
        return Router(built, upstreams.fallbacks_of, named=True, observer=self.observer, rng=self._rng)

    def _healths(self, specs: Iterable[UpstreamSpec], *, opens: bool) -> list[Health]:
        """The health of each upstream: kept when the same upstream was in the last set, new otherwise."""
        with self._lock:
            kept: dict[tuple[object, ...], Health] = {}
            out = []
            for spec in specs:
                key = _identity(spec, opens)
                health = self._health.get(key) or Health(spec.name, Breaker(spec.breaker, self._clock, opens=opens))
                kept[key] = health
                out.append(health)
            self._health = kept
            return out


def _identity(spec: UpstreamSpec, opens: bool) -> tuple[object, ...]:
    """What makes an upstream the same one across snapshots (its key only as a digest)."""
    digest = hashlib.sha256(spec.api_key.encode()).hexdigest()
    return (spec.name, spec.kind, spec.base_url, digest, spec.breaker, opens)
