"""A circuit breaker per upstream: a small state machine with an injected clock.

- CLOSED: every call may go. It opens after `failure_threshold` failed
  attempts in a row, or when at least `failure_ratio` of the attempts of the
  last `window` seconds failed (once there were `min_calls` of them).
- OPEN: no call goes, except one half-open probe once `probe_interval` has
  passed since it opened (or since the last probe failed).
- HALF_OPEN: that one probe is in flight; nothing else goes meanwhile. A
  successful probe lets the next one go at once; `close_after` of them in a
  row close the circuit. A failed probe opens it again for `probe_interval`.
- A refused key (401) or an exhausted quota (429 insufficient_quota) opens it
  at once, for `auth_cooldown` / `quota_cooldown` instead of `probe_interval`.

Separately, an upstream's Retry-After marks it busy until then (`busy_until`):
the router prefers others meanwhile, without counting it as broken.

Single-threaded: the event loop of the engine that owns it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from ..errors import Reason
from ..upstreams import BreakerPolicy

Clock = Callable[[], float]
# The failure-ratio window is kept in this many buckets (memory O(1) per upstream).
WINDOW_BUCKETS = 10


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Failure(enum.Enum):
    """What an attempt's failure says about its upstream."""

    TRANSIENT = "transient"  # 5xx, 429 rate limit, connection failure, timeout: counts toward opening
    AUTH = "auth"  # 401: its key was refused; out for auth_cooldown
    QUOTA = "quota"  # 429 insufficient_quota: out for quota_cooldown


class Window:
    """Attempts and failures of the last `seconds`, in WINDOW_BUCKETS buckets."""

    __slots__ = ("_clock", "_failed", "_stamp", "_total", "_width")

    def __init__(self, seconds: float, clock: Clock) -> None:
        self._width = seconds / WINDOW_BUCKETS
        self._clock = clock
        self._total = [0] * WINDOW_BUCKETS
        self._failed = [0] * WINDOW_BUCKETS
        self._stamp = [-1] * WINDOW_BUCKETS

    def add(self, failed: bool) -> None:
        tick = int(self._clock() / self._width)
        i = tick % WINDOW_BUCKETS
        if self._stamp[i] != tick:
            self._stamp[i], self._total[i], self._failed[i] = tick, 0, 0
        self._total[i] += 1
        self._failed[i] += failed

    def counts(self) -> tuple[int, int]:
        """(attempts, failures) in the window."""
        oldest = int(self._clock() / self._width) - WINDOW_BUCKETS + 1
        total = failed = 0
        for i in range(WINDOW_BUCKETS):
            if self._stamp[i] >= oldest:
                total += self._total[i]
                failed += self._failed[i]
        return total, failed

    def clear(self) -> None:
        self._stamp = [-1] * WINDOW_BUCKETS


class Breaker:
    """The circuit of one upstream; see the module docstring."""

    def __init__(self, policy: BreakerPolicy, clock: Clock = time.monotonic, *, opens: bool = True) -> None:
        self.policy = policy
        self._clock = clock
        self._opens = opens  # False: only counts (a lone upstream has nowhere else to send calls)
        self.last_failure: Reason | None = None  # why it last failed (what a call refused while open is told)
        self._state = State.CLOSED
        self._consecutive = 0  # failures in a row while closed
        self._successes = 0  # probes in a row that succeeded while half-open
        self._probing = False
        self._retry_at = 0.0  # open: when the next probe may go
        self.busy_until = 0.0
        self.window = Window(policy.window, clock)
        self.opened = 0  # times it opened since start (for metrics and tests)

    @property
    def state(self) -> State:
        return self._state

    def available(self) -> bool:
        """Whether a call may go now (as a normal call, or as the probe)."""
        if self._state is State.CLOSED:
            return True
        if self._state is State.OPEN:
            return self._clock() >= self._retry_at
        return not self._probing

    def busy(self) -> bool:
        return self._clock() < self.busy_until

    def acquire(self) -> bool:
        """Take a call that `available` allowed; True when it is the half-open probe."""
        if self._state is State.CLOSED:
            return False
        if self._state is State.OPEN:
            self._state = State.HALF_OPEN
            self._successes = 0
        self._probing = True
        return True

    def success(self, probe: bool) -> None:
        self.window.add(False)
        if self._state is State.CLOSED:
            self._consecutive = 0
        elif probe and self._state is State.HALF_OPEN:
            self._probing = False
            self._successes += 1
            if self._successes >= self.policy.close_after:
                self._close()

    def failure(
        self, probe: bool, kind: Failure = Failure.TRANSIENT, reason: Reason = Reason.UPSTREAM_UNAVAILABLE
    ) -> None:
        self.window.add(True)
        self.last_failure = reason
        now = self._clock()
        if not self._opens:
            return
        if kind is Failure.AUTH:
            self._open(now + self.policy.auth_cooldown)
        elif kind is Failure.QUOTA:
            self._open(now + self.policy.quota_cooldown)
        elif self._state is State.HALF_OPEN:
            if probe:
                self._open(now + self.policy.probe_interval)
        elif self._state is State.CLOSED:
            self._consecutive += 1
            if self._consecutive >= self.policy.failure_threshold or self._ratio_exceeded():
                self._open(now + self.policy.probe_interval)
        # OPEN: a call that started before it opened; nothing new to learn.

    def release(self, probe: bool) -> None:
        """A call that ended with neither outcome (cancelled, or the caller's deadline): free the probe."""
        if probe and self._state is State.HALF_OPEN:
            self._probing = False

    def mark_busy(self, seconds: float) -> None:
        self.busy_until = max(self.busy_until, self._clock() + seconds)

    def retry_in(self) -> float:
        """Seconds until this upstream may take a call again (0 when it may now)."""
        now = self._clock()
        wait = max(0.0, self.busy_until - now)
        if self._state is State.OPEN:
            wait = max(wait, self._retry_at - now)
        return wait

    def error_rate(self) -> float:
        total, failed = self.window.counts()
        return failed / total if total else 0.0

    def _ratio_exceeded(self) -> bool:
        total, failed = self.window.counts()
        return total >= self.policy.min_calls and failed >= self.policy.failure_ratio * total

    def _open(self, retry_at: float) -> None:
        if self._state is State.OPEN:
            self._retry_at = max(self._retry_at, retry_at)  # a longer cool-down is never shortened
        else:
            self.opened += 1
            self._state = State.OPEN
            self._retry_at = retry_at
        self._probing = False
        self._consecutive = 0
        self._successes = 0

    def _close(self) -> None:
        self._state = State.CLOSED
        self._consecutive = 0
        self._probing = False
        self.window.clear()
