"""`make bench`: the gateway against the SDK called directly, side by side, in one run.

    .venv/bin/python bench/run.py [--smoke] [--out DIR] [--windows N] [--window S] [--transports | --tls-scale]
                                  [--no-ghz | --only-ghz] ...

It starts a fast stand-in upstream (bench/fast_upstream.py) and the gateway
(`python -m gpt_grpc.server`), pins both to one core and the load generator
(bench/load.py, one process per window) to another where the machine has two
or more, and measures:

- unary calls at concurrency 1, 32 and 256 and streams (20 chunks) at 32 and
  at 1 (time to first chunk): the application calling `openai.AsyncOpenAI`
  directly against the stand-in, and the same calls through the gateway. The
  windows of the two paths alternate (direct, gateway, direct, ...) so that a
  noisy neighbour hurts both alike;
- CountTokens on a 1 KB text against the grpc health Check on the same server
  (an honest empty RPC), and on a 1 MB text against gpt_grpc.tokens.count_text
  in process;
- the stand-in's own capacity (a raw keep-alive HTTP client), so it is known
  not to be the bottleneck;
- slow-upstream capacity: 10,000 calls in flight against an upstream that
  answers after 30 s: all must end OK, server RSS must stay under 600 MB;
- readiness: process start to health SERVING (encodings loaded);
- unary at 256 with 1 and 2 server worker processes (`--workers`, on a Redis
  store), nothing pinned (skipped by --no-scaling and --smoke);
- the store: unary calls at concurrency 32 with a client token (a client with
  a request limit, so every call is admitted through the store), the gateway
  on a Redis store against the same gateway on the in-memory store, windows
  alternating; and the Redis commands per call, from INFO commandstats over
  the Redis windows (`--only-store` runs this row alone; skipped by --smoke).
- tracing: unary calls at concurrency 32 through a gateway tracing every
  call (OTEL_TRACES_SAMPLER=always_on, spans exported over OTLP/gRPC to a
  local receiver, tests/otlp_receiver.py) against the same gateway with
  tracing off, windows alternating; the spans the receiver got
  (`--only-tracing` runs this row alone; skipped by --smoke).
- several upstreams: unary calls at concurrency 32, the gateway with one
  upstream configured through an upstreams file (`--upstreams`) against the
  same gateway configured by the OPENAI_BASE_URL shorthand, windows
  alternating (`--only-upstreams` runs this row alone).
- ghz (a Go gRPC load generator, built by `make grpc-tools`): unary calls
  at concurrency 32 measured by ghz as well as by bench/load.py, then with
  one thing changed at a time (ghz's connections 1/4/16, the aiohttp
  stand-in `python -m tests.standin` as upstream, gateway + upstream + ghz on
  one core, and the last two together), windows alternating; the gateway's
  CPU per call as ghz sees it, the upstream's and ghz's own (`--only-ghz`
  runs this row alone and writes ghz.md; `--no-ghz` skips it; --smoke runs
  one window of 1 s of ghz over 1 connection).
- the upstream transport (GPT_GRPC_UPSTREAM_TRANSPORT): one gateway per
  candidate in `TRANSPORTS` against the same stand-in, unary and streams at
  concurrency 32, the candidates' windows alternating. `--transports` runs
  only these rows (and the stand-in's capacity) and writes transports.md;
- `--tls-scale` (not part of the default run): the slow-upstream scenario
  over plain HTTP, then over HTTPS (TLS on loopback), writes tls_scale.md.

Every figure is the median of the windows, with min-max. The Markdown report,
a JSON file with every window and a PNG chart go to bench/results/ (or --out).
It is a benchmark, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ghz_load  # bench/ghz_load.py

if TYPE_CHECKING:
    from tests.redis_server import RedisServer

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
API_KEY = "sk-bench-0123456789abcdefghijklmnop"
ADMIN_TOKEN = "bench-admin-token-0123456789-abcdefgh"
KB_TEXT = ("The quick brown fox jumps over the lazy dog. " * 23)[:1024]
ONE_MB = 1 << 20

TARGETS = {
    "unary_32": ("unary calls/s, gateway / direct, concurrency 32", ">=", 1.0),
    "unary_256": ("unary calls/s, gateway / direct, concurrency 256", ">=", 1.0),
    "stream_32": ("streams/s, gateway / direct, concurrency 32", ">=", 1.0),
    "ttfc_1": ("time to first chunk at concurrency 1, gateway - direct (ms)", "<=", 1.0),
    "count_1k": ("CountTokens 1 KB calls/s / health Check calls/s", ">=", 0.9),
    "count_1m": ("CountTokens 1 MB latency / in-process count_text latency", "<=", 1.2),
    "slow_ok": ("slow upstream: calls OK / calls", ">=", 1.0),
    "slow_rss": ("slow upstream: server peak RSS (MB)", "<", 600.0),
    "ready": ("readiness: start to SERVING (s)", "<=", 1.5),
    "store_32": ("unary calls/s with a client token, Redis store / in-memory store, concurrency 32", ">=", 0.85),
    "upstreams_32": ("unary calls/s, one upstream from an upstreams file / the shorthand, concurrency 32", ">=", 0.95),
}


# GPT_GRPC_UPSTREAM_TRANSPORT values compared side by side: the gateway's own pool (default), httpx's (the
# fallback). A third candidate, the own pool with llhttp (httptools) as its parser, was measured here and
# dropped (issue 12): no faster, and it refuses answers RFC 9112 says a client must accept.
TRANSPORTS = ("fast", "httpx")
TRANSPORT_NAMES = {"fast": "own pool", "httpx": "httpx2's transport (httpcore, h11)"}
TRANSPORT_CONCURRENCY = 32
TRACING_CONCURRENCY = 32
GHZ_CONCURRENCY = 32


@dataclass(frozen=True)
class GhzVariant:
    """One line of the ghz row: the load generator, its connections, the upstream, the pinning."""

    generator: str  # "ghz", or "python": bench/load.py (grpc.aio, generated stubs)
    connections: int
    upstream: str  # "fast": bench/fast_upstream.py; "standin": python -m tests.standin (aiohttp)
    one_core: bool  # gateway, upstream and load generator on one CPU (else pinned as the other rows)
    shows: str  # what the line isolates, against ghz over 1 connection


# Where the difference between an independent ghz run (upstream and gateway on one core, ~990-1,200 calls/s,
# 0.8-0.9 ms of gateway CPU per call) and `make bench` (~1,700 calls/s, ~0.52 ms) goes (issue 12): the client,
# the connections, the upstream's answer, the pinning, each changed alone against `ghz_1`, then all together.
GHZ_VARIANTS: dict[str, GhzVariant] = {
    "ghz_1": GhzVariant("ghz", 1, "fast", False, "the reference: pinned as the other rows, fast upstream"),
    "python": GhzVariant("python", 1, "fast", False, "the client: the project's Python load generator instead"),
    "ghz_4": GhzVariant("ghz", 4, "fast", False, "the connections: 4 instead of 1"),
    "ghz_16": GhzVariant("ghz", 16, "fast", False, "the connections: 16 instead of 1"),
    "ghz_standin": GhzVariant("ghz", 1, "standin", False, "the upstream: the aiohttp stand-in instead"),
    "ghz_one_core": GhzVariant("ghz", 1, "fast", True, "the pinning: gateway, upstream and ghz on one core"),
    "ghz_standin_one_core": GhzVariant(
        "ghz", 1, "standin", True, "the independent run's set-up: aiohttp stand-in, everything on one core"
    ),
}


# The gateway issue 12's speed targets are measured against: main when its bench/results were taken
# (2026-11-26, before the transport, engine and store work). Its gateway runs from a git worktree of
# this repository, with this checkout's virtualenv, beside the current one.
BASELINE_REF = "b571015"
BASELINE_CONCURRENCY = 32


@dataclass
class Plan:
    windows: int = 3
    window: float = 3.0
    warmup: float = 1.0
    concurrencies: tuple[int, ...] = (1, 32, 256)
    stream_concurrency: int = 32
    slow_calls: int = 10_000
    slow_delay: float = 30.0
    slow_rounds: int = 3
    readiness_runs: int = 5
    one_mb: int = ONE_MB
    scaling: bool = True
    store: bool = True
    tracing: bool = True
    upstreams: bool = True
    ghz: bool = True
    baseline: str | None = BASELINE_REF  # a git ref whose gateway runs beside this one (None: no baseline row)
    ghz_variants: tuple[str, ...] = tuple(GHZ_VARIANTS)
    ghz_windows: int | None = None  # None: `windows`
    ghz_window: float | None = None  # None: `window`


SMOKE = Plan(
    windows=3,
    window=0.2,
    warmup=0.1,
    concurrencies=(1, 4),
    stream_concurrency=4,
    slow_calls=40,
    slow_delay=0.5,
    slow_rounds=1,
    readiness_runs=1,
    one_mb=64 * 1024,
    scaling=False,
    store=False,
    tracing=False,
    baseline=None,
    ghz_variants=("ghz_1",),
    ghz_windows=1,
    ghz_window=1.0,
)


# --------------------------------------------------------------------------- processes


@dataclass
class Cpus:
    server: set[int] | None
    load: set[int] | None

    @property
    def pinned(self) -> bool:
        return self.server is not None


def plan_cpus() -> Cpus:
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return Cpus(None, None)
    if len(available) < 2:
        return Cpus(None, None)
    half = len(available) // 2
    return Cpus(set(available[:half]), set(available[half:]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _preexec(cpus: set[int] | None) -> Any:
    def pin() -> None:
        os.setsid()  # its own process group: stopped as one, never by name
        if cpus:
            os.sched_setaffinity(0, cpus)

    return pin


def _every_cpu() -> set[int] | None:
    try:
        return set(range(os.cpu_count() or 1)) if hasattr(os, "sched_setaffinity") else None
    except OSError:
        return None


def tree_pids(pid: int) -> list[int]:
    """`pid` and its descendants (server workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return out


def rss_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError), open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


class RssSampler:
    """Peak RSS of a process tree, sampled every 50 ms on a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(tree_pids(self.pid)))
            self._stop.wait(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.peak = max(self.peak, rss_mb(tree_pids(self.pid)))


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, 15)  # its own group (setsid): the server and its workers
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, 9)
                self.popen.wait(timeout=5)


class Stack:
    """Processes started by the run, stopped in reverse order whatever happens."""

    def __init__(self, logs: Path, cpus: Cpus) -> None:
        self.logs = logs
        self.cpus = cpus
        self.procs: list[Proc] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, pin: bool = True) -> Proc:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                # Unpinned means every CPU: a child would otherwise inherit this process's (the load generator's).
                preexec_fn=_preexec(self.cpus.server if pin else _every_cpu()),
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()


def start_upstream(stack: Stack, delay: float = 0.0, tls: Path | None = None, pin: bool = True) -> tuple[Proc, str]:
    """The fast upstream; with `tls` (a tests/pki.py directory) over HTTPS with its server certificate;
    `pin`: on the servers' CPUs (with the gateway), else on every CPU."""
    port_file = stack.logs / f"upstream-{time.monotonic_ns()}.port"
    argv = [PY, str(BENCH / "fast_upstream.py"), "--port", "0", "--port-file", str(port_file)]
    if delay:
        argv += ["--delay", str(delay)]
    if tls is not None:
        argv += ["--tls-cert", str(tls / "server.pem"), "--tls-key", str(tls / "server.key")]
    proc = stack.spawn(f"upstream-delay{delay:g}", argv, pin=pin)
    port = wait_port_file(proc, port_file, "fast upstream")
    return proc, f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1"


def start_aiohttp_standin(stack: Stack) -> tuple[Proc, str]:
    """The project's stand-in upstream (`python -m tests.standin`, aiohttp: what an independent tester
    would point the gateway at), on the servers' CPUs; its OpenAI base URL."""
    port_file = stack.logs / f"standin-{time.monotonic_ns()}.port"
    argv = [PY, "-m", "tests.standin", "--port", "0", "--port-file", str(port_file)]
    proc = stack.spawn("standin", argv)
    return proc, f"http://127.0.0.1:{wait_port_file(proc, port_file, 'stand-in')}/v1"


def wait_port_file(proc: Proc, port_file: Path, what: str, timeout: float = 20.0) -> int:
    """The port a child process writes to `port_file` once it listens."""
    deadline = time.monotonic() + timeout
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start; see {proc.log}")
        time.sleep(0.01)
    return int(port_file.read_text())


def wait_serving(target: str, deadline: float) -> None:
    """Poll until the port accepts, then until health says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    host, port = target.rsplit(":", 1)
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} never accepted a connection") from None
            time.sleep(0.002)
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} never became SERVING")
            time.sleep(0.002)


def start_gateway(
    stack: Stack,
    base_url: str,
    *,
    name: str = "gateway",
    args: tuple[str, ...] = (),
    pin: bool = True,
    extra_env: dict[str, str] | None = None,
) -> tuple[Proc, str, float]:
    """The gateway process; returns it, its target and seconds from spawn to SERVING."""
    port = free_port()
    env = {
        **(extra_env or {}),
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_BASE_URL": base_url,
        "GPT_GRPC_PORT": str(port),
        "GPT_GRPC_ADMIN_TOKEN": ADMIN_TOKEN,
        "GPT_GRPC_REQUEST_TIMEOUT": "120",
    }
    started = time.monotonic()
    proc = stack.spawn(name, [PY, "-m", "gpt_grpc.server", *args], env=env, pin=pin)
    target = f"127.0.0.1:{port}"
    try:
        wait_serving(target, started + 60)
    except TimeoutError:
        raise RuntimeError(f"gateway did not become SERVING; see {proc.log}") from None
    return proc, target, time.monotonic() - started


IN_PROCESS = False  # --smoke: run the load in this process (no interpreter start per window)


def load(spec: dict[str, Any], cpus: Cpus, timeout: float) -> dict[str, Any]:
    """Run one bench/load.py process (pinned to the load generator's cores), or one ghz window."""
    if spec["kind"] == "ghz":
        return ghz_load.run_window(spec, cpus.load, timeout)
    if IN_PROCESS:
        sys.path.insert(0, str(BENCH))
        import load as load_module  # bench/load.py

        return load_module.run_spec(spec)  # type: ignore[no-any-return]
    result = subprocess.run(
        [PY, str(BENCH / "load.py"), "-"],
        input=json.dumps(spec).encode(),
        cwd=ROOT,
        capture_output=True,
        timeout=timeout,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus.load)) if cpus.load else None,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"load {spec['kind']} failed: {result.stderr.decode()[-2000:]}")
    return json.loads(result.stdout)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- figures


def summary(values: list[float]) -> dict[str, float]:
    clean = [v for v in values if v == v]  # drop NaN
    if not clean:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean)}


@dataclass
class Series:
    """Windows of one measurement (one path, one scenario)."""

    windows: list[dict[str, Any]] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, result: dict[str, Any], rss: float | None = None) -> None:
        self.windows.extend(result["windows"])
        for k, v in result.get("error_kinds", {}).items():
            self.errors[k] = self.errors.get(k, 0) + v
        if rss is not None:
            self.rss_mb.append(rss)

    def stat(self, key: str) -> dict[str, float]:
        return summary([w[key] for w in self.windows if w.get(key) is not None])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"windows": self.windows, "errors": self.errors}
        for key in ("rate", "p50_ms", "p99_ms", "ttfc_p50_ms", "cpu_ms_per_call"):
            out[key] = self.stat(key)
        if self.rss_mb:
            out["peak_rss_mb"] = summary(self.rss_mb)
        return out


def ratio_of_medians(a: Series, b: Series, key: str = "rate") -> float:
    return a.stat(key)["median"] / b.stat(key)["median"]


def paired_ratios(a: Series, b: Series, key: str = "rate") -> dict[str, float]:
    """Ratio per round (window i of a over window i of b): median and min-max."""
    pairs = [x[key] / y[key] for x, y in zip(a.windows, b.windows, strict=False) if y[key]]
    return summary(pairs)


# --------------------------------------------------------------------------- the run


class Bench:
    def __init__(self, plan: Plan, out: Path, cpus: Cpus) -> None:
        self.plan = plan
        self.out = out
        self.cpus = cpus
        self.logs = Path(tempfile.mkdtemp(prefix="gpt-grpc-bench-"))
        self.stack = Stack(self.logs, cpus)
        self.results: dict[str, Any] = {}
        self.series: dict[str, Series] = {}
        self.upstreams: dict[str, Proc] = {}  # the fast upstream by base URL (rows that read its CPU)

    def say(self, text: str) -> None:
        print(text, flush=True)

    def base_spec(self, kind: str, concurrency: int) -> dict[str, Any]:
        p = self.plan
        return {"kind": kind, "concurrency": concurrency, "warmup": p.warmup, "window": p.window, "windows": 1}

    def window_timeout(self) -> float:
        return 120 + self.plan.warmup + self.plan.window

    def alternate(
        self,
        name: str,
        specs: dict[str, dict[str, Any]],
        server: Proc | dict[str, Proc] | None,
        rounds: int | None = None,
    ) -> dict[str, Series]:
        """Run one window of each spec in turn, `rounds` (default: `windows`) times; peak RSS of the server
        (of each label's own server, when `server` maps labels to processes) per gateway window."""
        series = {label: Series() for label in specs}
        for round_ in range(rounds or self.plan.windows):
            for label, spec in specs.items():
                if isinstance(server, dict):
                    spec = {**spec, "server_pids": tree_pids(server[label].pid)}
                    with RssSampler(server[label].pid) as rss:
                        result = load(spec, self.cpus, self.window_timeout())
                    series[label].add(result, rss.peak)
                elif server is not None and label not in ("direct", "local"):
                    spec = {**spec, "server_pids": tree_pids(server.pid)}
                    with RssSampler(server.pid) as rss:
                        result = load(spec, self.cpus, self.window_timeout())
                    series[label].add(result, rss.peak)
                else:
                    series[label].add(load(spec, self.cpus, self.window_timeout()))
                last = series[label].windows[-1]
                self.say(
                    f"  {name:<14} {label:<8} round {round_ + 1}: {last['rate']:8.1f}/s"
                    f"  p50 {last['p50_ms']:7.2f} ms  p99 {last['p99_ms']:7.2f} ms"
                    + (f"  ttfc {last['ttfc_p50_ms']:.2f} ms" if last.get("ttfc_p50_ms") is not None else "")
                    + (f"  cpu {last['cpu_ms_per_call']:.3f} ms/call" if last.get("cpu_ms_per_call") else "")
                    + (f"  errors {last['errors']}" if last["errors"] else "")
                )
        for label, s in series.items():
            self.series[f"{name}/{label}"] = s
        return series

    def start_standin(self) -> tuple[Proc, str]:
        """The fast upstream, and its own capacity measured (so it is known not to be the bottleneck)."""
        self.say(f"logs in {self.logs}")
        upstream, base_url = start_upstream(self.stack)
        self.upstreams[base_url] = upstream
        self.say("stand-in capacity (raw keep-alive HTTP client, concurrency 32)")
        spec = {**self.base_spec("raw_http", 32), "base_url": base_url, "server_pids": [upstream.pid]}
        self.alternate("standin", {"raw": spec}, None)
        return upstream, base_url

    def run(self) -> dict[str, Any]:
        p = self.plan
        try:
            # 1. the stand-in's own capacity
            upstream, base_url = self.start_standin()

            gateway, target, first_ready = start_gateway(self.stack, base_url)
            self.results["ready_first_s"] = first_ready
            # 2. unary, then streams, direct and gateway alternating
            for c in p.concurrencies:
                self.say(f"unary, concurrency {c}")
                self.alternate(
                    f"unary_{c}",
                    {
                        "direct": {**self.base_spec("direct_unary", c), "base_url": base_url},
                        "gateway": {**self.base_spec("gateway_unary", c), "target": target},
                    },
                    gateway,
                )
            for c in sorted({p.stream_concurrency, 1}, reverse=True):
                self.say(f"streams of 20 chunks, concurrency {c}")
                self.alternate(
                    f"stream_{c}",
                    {
                        "direct": {**self.base_spec("direct_stream", c), "base_url": base_url},
                        "gateway": {**self.base_spec("gateway_stream", c), "target": target},
                    },
                    gateway,
                )
            # 3. CountTokens
            self.say("CountTokens 1 KB against the health Check (empty RPC), concurrency 32")
            c = max(p.concurrencies)
            c = 32 if 32 in p.concurrencies else c
            self.alternate(
                "count_1k",
                {
                    "health": {**self.base_spec("health", c), "target": target},
                    "count": {**self.base_spec("count_tokens", c), "target": target, "text": KB_TEXT},
                },
                gateway,
            )
            self.say(f"CountTokens {p.one_mb // 1024} KB against count_text in process, concurrency 1")
            big = _big_text(p.one_mb)
            self.alternate(
                "count_1m",
                {
                    "local": {**self.base_spec("local_count", 1), "text": big},
                    "gateway": {**self.base_spec("count_tokens", 1), "target": target, "text": big},
                },
                gateway,
            )
            self.stack.stop(gateway)
            # 4. slow upstream
            self.slow()
            # 5. readiness
            self.readiness(base_url, first_ready)
            # 6. the upstream transport candidates
            self.transports(base_url)
            # 7. workers (optional: a failure here is reported, the rest of the report stands)
            if p.scaling:
                try:
                    with redis_server() as redis:
                        self.scaling(base_url, redis.url)
                except Exception as exc:
                    self.say(f"  scaling failed: {exc}")
                    self.results["scaling_error"] = str(exc)
            # 7. the store
            if p.store:
                self.store_row(base_url)
            # 8. tracing on against off
            if p.tracing:
                self.tracing_row(base_url)
            # 9. several upstreams: one from a file against the shorthand
            if p.upstreams:
                self.upstreams_row(base_url)
            # 10. this gateway against the baseline's (issue 12's targets)
            if p.baseline:
                self.baseline_row(base_url)
            # 11. ghz, a Go load generator: where the gateway's figures depend on the client and the set-up
            if p.ghz:
                self.ghz_row(base_url)
            self.stack.stop(upstream)
        finally:
            self.stack.close()
        return self.results

    def run_transports(self) -> None:
        """Only the transport comparison (`--transports`), after the stand-in's capacity."""
        try:
            upstream, base_url = self.start_standin()
            self.transports(base_url)
            self.stack.stop(upstream)
        finally:
            self.stack.close()

    def transports(self, base_url: str) -> None:
        """One gateway per GPT_GRPC_UPSTREAM_TRANSPORT candidate, same stand-in; their windows alternate."""
        gateways: dict[str, Proc] = {}
        targets: dict[str, str] = {}
        for name in TRANSPORTS:
            env = {"GPT_GRPC_UPSTREAM_TRANSPORT": name}
            gateways[name], targets[name], _ = start_gateway(
                self.stack, base_url, name=f"gateway-{name}", extra_env=env
            )
        c = TRANSPORT_CONCURRENCY
        for kind, what in (("unary", "unary"), ("stream", "streams of 20 chunks")):
            self.say(f"upstream transports, {what}, concurrency {c}")
            specs = {name: {**self.base_spec(f"gateway_{kind}", c), "target": targets[name]} for name in TRANSPORTS}
            self.alternate(f"transport_{kind}", specs, gateways)
        for proc in gateways.values():
            self.stack.stop(proc)

    def tls_scale(self) -> None:
        """`--tls-scale`: the slow-upstream scenario over plain HTTP, then over HTTPS (TLS on loopback).

        The same fast upstream serves TLS with a certificate from tests/pki.py; the gateway trusts
        its CA through SSL_CERT_FILE, as an operator's would trust a private CA. One round each. The
        upstream is not pinned with the gateway here: its 10,000 server-side handshakes would take the
        gateway's core (a real upstream runs elsewhere)."""
        sys.path.insert(0, str(ROOT))
        from tests.pki import make_pki

        pki = make_pki(Path(tempfile.mkdtemp(prefix="gpt-grpc-bench-pki-")))
        p = self.plan
        out: dict[str, Any] = {}
        for scheme in ("http", "https"):
            self.say(f"{scheme}: {p.slow_calls} calls in flight, answers after {p.slow_delay:g} s")
            tls = pki if scheme == "https" else None
            upstream, base_url = start_upstream(self.stack, delay=p.slow_delay, tls=tls, pin=False)
            try:
                env = {"SSL_CERT_FILE": str(pki / "ca.pem")}
                gateway, target, _ = start_gateway(self.stack, base_url, name=f"gateway-{scheme}", extra_env=env)
                with RssSampler(gateway.pid) as rss:
                    result = load(self.slow_spec(target), self.cpus, p.slow_delay * 4 + 300)
                result["peak_rss_mb"] = rss.peak
                self.stack.stop(gateway)
            finally:
                self.stack.stop(upstream)
            out[scheme] = result
            self.say(
                f"  {result['ok']}/{result['calls']} OK {result['codes']} {result.get('failures', {})}"
                f"  wall {result['wall_s']:.1f} s  gateway peak RSS {rss.peak:.0f} MB"
            )
        self.results["tls_scale"] = out

    def slow_spec(self, target: str) -> dict[str, Any]:
        p = self.plan
        return {
            "kind": "slow",
            "target": target,
            "calls": p.slow_calls,
            "channels": max(1, min(20, p.slow_calls // 500)),
            "deadline": p.slow_delay * 3 + 30,
        }

    def slow(self) -> None:
        p = self.plan
        self.say(f"slow upstream: {p.slow_calls} calls in flight, answers after {p.slow_delay:g} s")
        upstream, base_url = start_upstream(self.stack, delay=p.slow_delay)
        rounds = []
        try:
            for round_ in range(p.slow_rounds):
                gateway, target, _ = start_gateway(self.stack, base_url, name=f"gateway-slow{round_}")
                with RssSampler(gateway.pid) as rss:
                    result = load(self.slow_spec(target), self.cpus, p.slow_delay * 4 + 120)
                result["peak_rss_mb"] = rss.peak
                rounds.append(result)
                self.say(
                    f"  round {round_ + 1}: {result['ok']}/{result['calls']} OK {result['codes']}"
                    f"  wall {result['wall_s']:.1f} s  peak RSS {rss.peak:.0f} MB"
                )
                self.stack.stop(gateway)
        finally:
            self.stack.stop(upstream)
        self.results["slow"] = {
            "calls": p.slow_calls,
            "delay_s": p.slow_delay,
            "rounds": rounds,
            "ok_fraction": summary([r["ok"] / r["calls"] for r in rounds]),
            "peak_rss_mb": summary([r["peak_rss_mb"] for r in rounds]),
            "wall_s": summary([r["wall_s"] for r in rounds]),
        }

    def readiness(self, base_url: str, first: float) -> None:
        times = [first]
        for i in range(self.plan.readiness_runs - 1):
            gateway, _, took = start_gateway(self.stack, base_url, name=f"gateway-ready{i}")
            times.append(took)
            self.stack.stop(gateway)
        self.say("readiness: " + ", ".join(f"{t:.2f} s" for t in times))
        self.results["ready_s"] = summary(times)
        self.results["ready_runs"] = times

    def run_alone(self, row: Callable[[str], None]) -> dict[str, Any]:
        """One row (`store_row`, `tracing_row`) against a fresh fast upstream, nothing else."""
        try:
            self.say(f"logs in {self.logs}")
            upstream, base_url = start_upstream(self.stack)
            self.upstreams[base_url] = upstream
            row(base_url)
            self.stack.stop(upstream)
        finally:
            self.stack.close()
        return self.results

    def tracing_row(self, base_url: str) -> None:
        """Unary at 32: a gateway tracing every call (OTLP/gRPC to a local receiver) against one not tracing.

        The receiver (a collector's stand-in that counts spans) runs on every CPU, not on the gateway's
        alone: a real collector runs elsewhere. The untraced gateway gets OTEL_SDK_DISABLED=true, so that
        an OTEL_EXPORTER_OTLP_ENDPOINT in the bench's own environment cannot turn its tracing on.
        """
        c = TRACING_CONCURRENCY
        self.say(f"tracing: unary calls at concurrency {c}, every call traced (OTLP/gRPC, local receiver) vs off")
        port_file = self.logs / "otlp-receiver.port"
        receiver = self.stack.spawn(
            "otlp-receiver", [PY, "-m", "tests.otlp_receiver", "--port-file", str(port_file)], pin=False
        )
        endpoint = f"http://127.0.0.1:{wait_port_file(receiver, port_file, 'OTLP receiver')}"
        traced_env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_SDK_DISABLED": "false",
        }
        gateways: dict[str, Proc] = {}
        targets: dict[str, str] = {}
        for label, env in (("off", {"OTEL_SDK_DISABLED": "true"}), ("on", traced_env)):
            gateways[label], targets[label], _ = start_gateway(
                self.stack, base_url, name=f"gateway-tracing-{label}", extra_env=env
            )
        specs = {label: {**self.base_spec("gateway_unary", c), "target": targets[label]} for label in ("off", "on")}
        series = self.alternate("tracing_32", specs, gateways)
        for proc in gateways.values():
            self.stack.stop(proc)  # the traced gateway exports what it still holds on its way out
        self.stack.stop(receiver)
        counted = [line for line in receiver.log.read_text().splitlines() if line.startswith("otlp receiver:")]
        calls = sum(w["calls"] for w in series["on"].windows)
        self.results["tracing"] = {
            "ratio": paired_ratios(series["on"], series["off"]),
            "server_cpu_ratio": paired_ratios(series["on"], series["off"], key="server_cpu_ms_per_call"),
            "receiver": counted[-1] if counted else "no count (see the receiver's log)",
            "traced_calls_in_windows": calls,
        }
        self.say(
            f"  on / off calls/s: {_fmt(self.results['tracing']['ratio'], 3)}; gateway CPU per call on / off: "
            f"{_fmt(self.results['tracing']['server_cpu_ratio'], 3)}; {self.results['tracing']['receiver']}"
        )

    def baseline_row(self, base_url: str) -> None:
        """Unary and streams at 32: this gateway against the one of `plan.baseline` (a git ref), alternating.

        The baseline's code is checked out into a temporary git worktree and run with this checkout's
        virtualenv (PYTHONPATH first), on the same CPU, the same fast upstream and the same load."""
        ref = self.plan.baseline
        assert ref is not None
        c = BASELINE_CONCURRENCY
        tree = Path(tempfile.mkdtemp(prefix="gpt-grpc-baseline-")) / "tree"
        added = subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), ref], cwd=ROOT, capture_output=True, check=False
        )
        if added.returncode != 0:
            self.say(f"  baseline {ref}: no worktree ({added.stderr.decode().strip()}); row skipped")
            self.results["baseline_error"] = added.stderr.decode().strip()
            return
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, check=False, text=True
        ).stdout.strip()
        self.say(f"baseline: gateway of {ref} ({commit}) against this one, unary and streams at concurrency {c}")
        gateways: dict[str, Proc] = {}
        targets: dict[str, str] = {}
        try:
            env = {"PYTHONPATH": str(tree / "server")}
            gateways["baseline"], targets["baseline"], _ = start_gateway(
                self.stack, base_url, name="gateway-baseline", extra_env=env
            )
            gateways["current"], targets["current"], _ = start_gateway(self.stack, base_url, name="gateway-current")
            for kind in ("unary", "stream"):
                specs = {
                    label: {**self.base_spec(f"gateway_{kind}", c), "target": targets[label]}
                    for label in ("baseline", "current")
                }
                series = self.alternate(f"baseline_{kind}", specs, gateways)
                self.results[f"baseline_{kind}"] = {
                    "ref": ref,
                    "commit": commit,
                    "rate_ratio": paired_ratios(series["current"], series["baseline"]),
                    "server_cpu_ratio": paired_ratios(
                        series["current"], series["baseline"], key="server_cpu_ms_per_call"
                    ),
                }
                r = self.results[f"baseline_{kind}"]
                self.say(
                    f"  {kind}: current / baseline calls/s {_fmt(r['rate_ratio'], 3)}, "
                    f"gateway CPU per call {_fmt(r['server_cpu_ratio'], 3)}"
                )
        finally:
            for proc in gateways.values():
                self.stack.stop(proc)
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
            shutil.rmtree(tree.parent, ignore_errors=True)

    def upstreams_row(self, base_url: str) -> None:
        """Unary at 32: one upstream through the upstreams file against the OPENAI_BASE_URL shorthand."""
        p = self.plan
        c = 32 if 32 in p.concurrencies else max(p.concurrencies)
        self.say(f"several upstreams: unary at concurrency {c}, one upstream from a file vs the shorthand")
        path = self.logs / "upstreams.toml"
        path.write_text(f'[[upstream]]\nname = "only"\nbase_url = "{base_url}"\napi_key_env = "OPENAI_API_KEY"\n')
        shorthand, shorthand_target, _ = start_gateway(self.stack, base_url, name="gateway-shorthand")
        from_file, file_target, _ = start_gateway(
            self.stack, base_url, name="gateway-file", args=("--upstreams", str(path))
        )
        try:
            series = self.alternate(
                f"upstreams_{c}",
                {
                    "shorthand": {**self.base_spec("gateway_unary", c), "target": shorthand_target},
                    "file": {**self.base_spec("gateway_unary", c), "target": file_target},
                },
                {"shorthand": shorthand, "file": from_file},
            )
        finally:
            self.stack.stop(shorthand)
            self.stack.stop(from_file)
        ratio = paired_ratios(series["file"], series["shorthand"])
        self.results["upstreams"] = {"concurrency": c, "file_over_shorthand": ratio}
        self.say(f"  file / shorthand calls/s: {_fmt(ratio, 3)}")

    def ghz_row(self, base_url: str) -> None:
        """Unary at 32 measured by ghz (a Go load generator) as well as by the project's Python one.

        The variants in GHZ_VARIANTS change one thing each against ghz over 1 connection, on the same
        gateway where they can: the client, the connections, the upstream (the aiohttp stand-in in place
        of the fast upstream: its own gateway), the pinning (gateway, upstream and ghz on one CPU: their
        own gateway and upstream), then the last two together; every variant's windows alternate. ghz
        runs on the load generator's CPU, as the Python load does, but for the one-core variants."""
        p = self.plan
        variants = {label: GHZ_VARIANTS[label] for label in p.ghz_variants}
        rounds, window = p.ghz_windows or p.windows, p.ghz_window or p.window
        one_cpu = {min(self.cpus.server)} if self.cpus.server else None
        one_core = Stack(self.logs, Cpus(one_cpu, one_cpu))
        self.say(f"ghz: unary calls at concurrency {GHZ_CONCURRENCY}, {len(variants)} variants, windows alternating")
        gateways: dict[tuple[str, bool], tuple[Proc, str]] = {}
        upstreams: dict[tuple[str, bool], Proc | None] = {}  # None: the caller's, when it is not known
        try:
            for v in variants.values():
                key = (v.upstream, v.one_core)
                if key in gateways:
                    continue
                stack = one_core if v.one_core else self.stack
                if key == ("fast", False):
                    upstreams[key], url = self.upstreams.get(base_url), base_url
                elif v.upstream == "fast":
                    upstreams[key], url = start_upstream(stack)
                else:
                    upstreams[key], url = start_aiohttp_standin(stack)
                name = f"gateway-ghz-{v.upstream}" + ("-one-core" if v.one_core else "")
                proc, target, _ = start_gateway(stack, url, name=name)
                gateways[key] = (proc, target)
            specs: dict[str, dict[str, Any]] = {}
            servers: dict[str, Proc] = {}
            for label, v in variants.items():
                servers[label], target = gateways[(v.upstream, v.one_core)]
                spec = {**self.base_spec("gateway_unary", GHZ_CONCURRENCY), "target": target, "window": window}
                if v.generator == "ghz":
                    spec |= {"kind": "ghz", "connections": v.connections, "warmup": 0.0}
                    upstream = upstreams[(v.upstream, v.one_core)]
                    if upstream is not None:  # its CPU per call too: on the gateway's core, it is the gateway's loss
                        spec["upstream_pids"] = [upstream.pid]
                    if v.one_core and one_cpu:
                        spec["cpus"] = sorted(one_cpu)
                specs[label] = spec
            for _, target in gateways.values():  # a warm-up per gateway (the Python load warms up per window)
                warmup = {**self.base_spec("ghz", GHZ_CONCURRENCY), "target": target, "warmup": 0.0, "window": p.warmup}
                load(warmup, self.cpus, self.window_timeout())
            series = self.alternate(f"ghz_{GHZ_CONCURRENCY}", specs, servers, rounds=rounds)
        finally:
            ours = [g for g, _ in gateways.values()] + [u for k, u in upstreams.items() if k != ("fast", False) and u]
            for each in ours:
                (one_core if each in one_core.procs else self.stack).stop(each)
            one_core.close()
        pinning = (
            f"gateway and upstream on CPU {sorted(self.cpus.server)}, load generator on CPU {sorted(self.cpus.load)}"
            if self.cpus.server and self.cpus.load
            else "not pinned"
        )
        self.results["ghz"] = {
            "concurrency": GHZ_CONCURRENCY,
            "windows": rounds,
            "window_s": window,
            "pinning": pinning,
            "one_core": f"all on CPU {sorted(one_cpu)}" if one_cpu else "not pinned",
            "variants": {label: vars(v) for label, v in variants.items()},
        }
        reference = series.get("ghz_1")
        for label, ser in series.items():
            self.say(
                f"  {label:<22} gateway CPU {_fmt(ser.stat('server_cpu_ms_per_call'), 3)} ms/call"
                + (f"; calls/s vs ghz_1 {_fmt(paired_ratios(ser, reference), 2)}" if reference is not None else "")
            )

    def store_row(self, base_url: str) -> None:
        """Unary at 32 with a client token: Redis store vs in-memory store; Redis commands per call."""
        self.say("store: unary calls at concurrency 32 with a client token, Redis store vs in-memory store")
        with redis_server() as redis:
            memory, memory_target, _ = start_gateway(self.stack, base_url, name="gateway-memory")
            metrics_port = free_port()
            shared, redis_target, _ = start_gateway(
                self.stack,
                base_url,
                name="gateway-redis",
                args=("--store", redis.url, "--metrics-port", str(metrics_port)),
            )
            specs = {}
            for label, target in (("memory", memory_target), ("redis", redis_target)):
                token = create_client(target, f"bench-{label}")
                specs[label] = {**self.base_spec("gateway_unary", 32), "target": target, "token": token}
            redis.command("CONFIG", "RESETSTAT")
            servers = {"memory": memory, "redis": shared}
            series = {label: Series() for label in specs}
            commands_before = trips_before = 0.0
            counted_calls = 0
            commands = trips = 0.0
            for round_ in range(self.plan.windows):
                for label, spec in specs.items():
                    if label == "redis":
                        commands_before = redis_commands(redis)
                        trips_before = scrape_gauge(metrics_port, "gpt_grpc_store_round_trips")
                    spec = {**spec, "server_pids": tree_pids(servers[label].pid)}
                    result = load(spec, self.cpus, self.window_timeout())
                    series[label].add(result)
                    last = series[label].windows[-1]
                    if label == "redis":
                        # Warm-up calls count too: every call the window's load process made.
                        made = result.get("total_calls", last["calls"])
                        counted_calls += made
                        commands += redis_commands(redis) - commands_before
                        trips += scrape_gauge(metrics_port, "gpt_grpc_store_round_trips") - trips_before
                    self.say(
                        f"  store    {label:<8} round {round_ + 1}: {last['rate']:8.1f}/s"
                        f"  p50 {last['p50_ms']:7.2f} ms  p99 {last['p99_ms']:7.2f} ms"
                        f"  gateway CPU {last['server_cpu_ms_per_call']:.3f} ms/call"
                        f"  load generator CPU {last['client_cpu_ms_per_call']:.3f} ms/call"
                        + (f"  errors {last['errors']}" if last["errors"] else "")
                    )
            for label, s in series.items():
                self.series[f"store_32/{label}"] = s
            self.stack.stop(memory)
            self.stack.stop(shared)
            stats = commandstats(redis)
        per_call = commands / counted_calls if counted_calls else float("nan")
        trips_per_call = trips / counted_calls if counted_calls else float("nan")
        self.results["store"] = {
            "round_trips_per_call": trips_per_call,
            "commands_per_call": per_call,
            "commandstats": stats,
            "calls": counted_calls,
        }
        ratio = paired_ratios(series["redis"], series["memory"])
        self.say(
            f"  Redis / memory calls/s: {_fmt(ratio, 3)}; store round trips per call {trips_per_call:.3f} "
            f"(the gateway's count); Redis commands per call {per_call:.3f}, scripts' own commands included "
            f"({counted_calls} calls; by command: {stats})"
        )

    def scaling(self, base_url: str, store_url: str) -> None:
        """Unary at 256 with 1 and 2 workers, nothing pinned: the load generator shares every core.

        On a machine with as many cores as workers plus the load generator's,
        calls/s grows with workers; where the cores are all in use (2 here:
        the gateway's ~0.6 ms and the client's ~0.3 ms of CPU per call fill
        both), the gateway's CPU per call is the figure that carries over.
        """
        p = self.plan
        out: dict[str, Any] = {}
        every_cpu = Cpus(None, _every_cpu())
        for workers in (1, 2):
            # Workers share clients, usage and settings through a shared store.
            args = ("--workers", str(workers), "--store", store_url)
            gateway, target, _ = start_gateway(self.stack, base_url, name=f"gateway-w{workers}", args=args, pin=False)
            series = Series()
            for _ in range(p.windows):
                # 16 connections, so that SO_REUSEPORT spreads them over the workers.
                spec = {**self.base_spec("gateway_unary", 256), "target": target, "channels": 16}
                spec["server_pids"] = tree_pids(gateway.pid)
                series.add(load(spec, every_cpu, self.window_timeout()))
            self.stack.stop(gateway)
            out[str(workers)] = series.to_json()
            server_cpu = summary([w["server_cpu_ms_per_call"] for w in series.windows])["median"]
            self.say(
                f"  workers {workers}: {series.stat('rate')['median']:.0f} calls/s, "
                f"gateway CPU {server_cpu:.3f} ms/call (nothing pinned)"
            )
        self.results["scaling"] = out


def _big_text(size: int) -> str:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "Iota,", "kappa."]
    out, n, i = [], 0, 0
    while n < size:
        w = words[i % len(words)] + (" " if i % 13 else "\n")
        out.append(w)
        n += len(w)
        i += 1
    return "".join(out)[:size]


# --------------------------------------------------------------------------- report


def _fmt(s: dict[str, float], digits: int = 0) -> str:
    if s["median"] != s["median"]:
        return "n/a"
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def compute(bench: Bench) -> dict[str, Any]:
    s = bench.series
    r = bench.results
    figures: dict[str, Any] = {"targets": {}}
    p = bench.plan
    for c in p.concurrencies:
        figures[f"unary_{c}"] = paired_ratios(s[f"unary_{c}/gateway"], s[f"unary_{c}/direct"])
    c = p.stream_concurrency
    figures[f"stream_{c}"] = paired_ratios(s[f"stream_{c}/gateway"], s[f"stream_{c}/direct"])
    ttfc = [
        g["ttfc_p50_ms"] - d["ttfc_p50_ms"]
        for g, d in zip(s["stream_1/gateway"].windows, s["stream_1/direct"].windows, strict=False)
        if g.get("ttfc_p50_ms") is not None and d.get("ttfc_p50_ms") is not None
    ]
    figures["ttfc_1"] = summary(ttfc)
    figures["count_1k"] = paired_ratios(s["count_1k/count"], s["count_1k/health"])
    figures["count_1m"] = paired_ratios(s["count_1m/gateway"], s["count_1m/local"], key="p50_ms")
    slow = r["slow"]
    figures["slow_ok"] = slow["ok_fraction"]
    figures["slow_rss"] = slow["peak_rss_mb"]
    figures["ready"] = r["ready_s"]
    keymap = {"unary_32": f"unary_{32 if 32 in p.concurrencies else max(p.concurrencies)}"}
    keymap["unary_256"] = f"unary_{256 if 256 in p.concurrencies else max(p.concurrencies)}"
    keymap["stream_32"] = f"stream_{c}"
    upstreams_key = f"upstreams_{r['upstreams']['concurrency']}" if "upstreams" in r else None
    if upstreams_key is not None:
        figures["upstreams_32"] = paired_ratios(s[f"{upstreams_key}/file"], s[f"{upstreams_key}/shorthand"])
    if "store_32/redis" in s:
        figures["store_32"] = paired_ratios(s["store_32/redis"], s["store_32/memory"])
        figures["store_commands_per_call"] = r["store"]["commands_per_call"]
    for key, (label, op, bound) in TARGETS.items():
        if key not in figures and key not in keymap:
            continue
        value = figures[keymap.get(key, key)]["median"]
        met = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]
        figures["targets"][key] = {"label": label, "op": op, "bound": bound, "value": value, "met": bool(met)}
    return figures


def markdown(bench: Bench, figures: dict[str, Any], meta: dict[str, Any]) -> str:
    s = bench.series
    p = bench.plan
    lines = [
        "# gpt-grpc benchmark",
        "",
        f"{meta['when']} · {meta['machine']} · {meta['pinning']}",
        f"{p.windows} windows of {p.window:g} s per figure (after {p.warmup:g} s warm-up); "
        "median (min-max). Direct and gateway windows alternate.",
        "",
        *(
            [
                "**Smoke run**: tiny counts (concurrency 1 and 4, a 64 KB text, 40 slow calls); it checks that the "
                "benchmark works, its figures mean nothing.",
                "",
            ]
            if meta["smoke"]
            else []
        ),
        "## Chat completions: the SDK called directly vs. through the gateway",
        "",
        "| path | concurrency | calls/s | p50 ms | p99 ms | time to first chunk ms | CPU ms/call "
        "| server peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [(f"unary_{c}", "unary", c) for c in p.concurrencies]
    rows += [(f"stream_{c}", "stream (20 chunks)", c) for c in sorted({p.stream_concurrency, 1})]
    for key, kind, c in rows:
        for label, name in (("direct", "direct SDK"), ("gateway", "gateway")):
            ser = s[f"{key}/{label}"]
            ttfc = _fmt(ser.stat("ttfc_p50_ms"), 2) if kind != "unary" else "-"
            rss = _fmt(summary(ser.rss_mb)) if ser.rss_mb else "-"
            lines.append(
                f"| {name} {kind} | {c} | {_fmt(ser.stat('rate'))} | {_fmt(ser.stat('p50_ms'), 2)} "
                f"| {_fmt(ser.stat('p99_ms'), 2)} | {ttfc} | {_fmt(ser.stat('cpu_ms_per_call'), 3)} | {rss} |"
            )
    lines += [
        "",
        "CPU ms/call: direct = the application process's CPU per call; gateway = the gateway "
        "process's CPU per call plus the gRPC client's (the application's) CPU per call.",
        "",
        "## CountTokens",
        "",
        "| call | concurrency | calls/s | p50 ms | p99 ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, name in (
        ("count_1k/health", "grpc health Check (empty RPC)"),
        ("count_1k/count", "CountTokens, 1 KB text"),
        ("count_1m/local", f"count_text in process, {p.one_mb // 1024} KB"),
        ("count_1m/gateway", f"CountTokens, {p.one_mb // 1024} KB text"),
    ):
        ser = s[key]
        conc = ser.windows[0].get("concurrency", "") if ser.windows else ""
        lines.append(
            f"| {name} | {conc} | {_fmt(ser.stat('rate'))} | {_fmt(ser.stat('p50_ms'), 3)} "
            f"| {_fmt(ser.stat('p99_ms'), 3)} |"
        )
    raw = s["standin/raw"]
    slow = bench.results["slow"]
    lines += [
        "",
        "## Stand-in upstream, slow upstream, readiness",
        "",
        f"- Stand-in capacity (raw keep-alive HTTP/1.1 client, concurrency 32): {_fmt(raw.stat('rate'))} req/s.",
        f"- Slow upstream: {slow['calls']:,} calls at once, each answered after {slow['delay_s']:g} s, "
        f"{len(slow['rounds'])} rounds: OK {_fmt(slow['ok_fraction'], 4)} of calls; "
        f"codes {[r['codes'] for r in slow['rounds']]}; "
        f"server peak RSS {_fmt(slow['peak_rss_mb'])} MB; wall {_fmt(slow['wall_s'], 1)} s.",
        f"- Readiness (process start to health SERVING, encodings loaded): {_fmt(bench.results['ready_s'], 2)} s "
        f"over {len(bench.results['ready_runs'])} starts.",
    ]
    if "scaling" in bench.results:
        sc = bench.results["scaling"]
        lines.append(
            "- Worker processes (unary, concurrency 256, nothing pinned, load generator on the same cores): "
            + "; ".join(
                f"{w} worker(s) {_fmt(v['rate'])} calls/s, gateway CPU "
                f"{_fmt(summary([x['server_cpu_ms_per_call'] for x in v['windows']]), 3)} ms/call"
                for w, v in sc.items()
            )
            + "."
        )
    if "store" in bench.results:
        lines.append(
            f"- Store (unary with a client token, concurrency 32): "
            f"{bench.results['store']['round_trips_per_call']:.3f} store round trips per call (the gateway's "
            f"gpt_grpc_store_round_trips), {bench.results['store']['commands_per_call']:.2f} Redis commands per "
            "call, those run inside scripts included (INFO commandstats)."
        )
    if "upstreams" in bench.results:
        up = bench.results["upstreams"]
        key = f"upstreams_{up['concurrency']}"
        lines.append(
            f"- Several upstreams (unary, concurrency {up['concurrency']}): one upstream from an upstreams file "
            f"{_fmt(s[key + '/file'].stat('rate'))} calls/s, the OPENAI_BASE_URL shorthand "
            f"{_fmt(s[key + '/shorthand'].stat('rate'))} calls/s; file / shorthand per round "
            f"{_fmt(up['file_over_shorthand'], 3)}."
        )
    lines += [
        "",
        *transport_section(bench),
        *tracing_section(bench),
        *store_section(bench),
        *baseline_section(bench),
        *ghz_section(bench),
    ]
    lines += ["## Ratios and targets", "", "| figure | target | value | met |", "| --- | --- | --- | --- |"]
    for t in figures["targets"].values():
        f = figures_key_value(t)
        lines.append(f"| {t['label']} | {t['op']} {t['bound']:g} | {f} | {'yes' if t['met'] else 'NO'} |")
    lines += ["", "Ratios are per round (gateway window over the direct window next to it), median (min-max)."]
    for key in [k for k in figures if k.startswith(("unary_", "stream_"))]:
        lines.append(f"- {key}: {_fmt(figures[key], 2)}")
    lines += ["", "![throughput and latency](chart.png)", ""]
    return "\n".join(lines)


def transport_section(bench: Bench) -> list[str]:
    """The transport candidates' table: calls/s and the gateway's CPU per call, unary and streams."""
    s = bench.series
    if "transport_unary/fast" not in s:
        return []
    lines = [
        f"## Upstream transport (GPT_GRPC_UPSTREAM_TRANSPORT), concurrency {TRANSPORT_CONCURRENCY}",
        "",
        "One gateway per candidate against the same stand-in; the candidates' windows alternate. "
        "Gateway CPU = the gateway process's CPU per call (the gRPC client's is not included). "
        "vs own pool = per round, this candidate's calls/s over the own pool's window of the same round.",
        "",
        "| transport | unary calls/s | gateway CPU ms/unary call | unary p50 ms | streams/s "
        "| gateway CPU ms/stream | unary vs own pool | streams vs own pool |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in TRANSPORTS:
        unary, stream = s[f"transport_unary/{name}"], s[f"transport_stream/{name}"]
        lines.append(
            f"| {TRANSPORT_NAMES[name]} (`{name}`) | {_fmt(unary.stat('rate'))} "
            f"| {_fmt(unary.stat('server_cpu_ms_per_call'), 3)} | {_fmt(unary.stat('p50_ms'), 2)} "
            f"| {_fmt(stream.stat('rate'))} | {_fmt(stream.stat('server_cpu_ms_per_call'), 3)} "
            f"| {_fmt(paired_ratios(unary, s['transport_unary/fast']), 2)} "
            f"| {_fmt(paired_ratios(stream, s['transport_stream/fast']), 2)} |"
        )
    return [*lines, ""]


def _paired_table(
    s: dict[str, Series], column: str, row: str, labels: tuple[str, str], reference_name: str
) -> list[str]:
    """Two gateways of one row, windows alternating: rate, latency, gateway CPU, calls/s against the first."""
    reference = s[f"{row}/{labels[0]}"]
    lines = [
        f"| {column} | calls/s | p50 ms | p99 ms | gateway CPU ms/call | calls/s vs {reference_name} |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for label in labels:
        ser = s[f"{row}/{label}"]
        lines.append(
            f"| {label} | {_fmt(ser.stat('rate'))} | {_fmt(ser.stat('p50_ms'), 2)} | {_fmt(ser.stat('p99_ms'), 2)} "
            f"| {_fmt(ser.stat('server_cpu_ms_per_call'), 3)} | {_fmt(paired_ratios(ser, reference), 3)} |"
        )
    return lines


def tracing_section(bench: Bench) -> list[str]:
    """Tracing on (every call sampled, exported over OTLP/gRPC) against off: calls/s and the gateway's CPU."""
    s = bench.series
    if "tracing_32/on" not in s:
        return []
    lines = [
        f"## Tracing (OpenTelemetry, OTLP/gRPC to a local receiver), unary, concurrency {TRACING_CONCURRENCY}",
        "",
        "Two gateways against the same stand-in, windows alternating: one tracing every call "
        "(OTEL_TRACES_SAMPLER=always_on, a server span and an attempt span per call, batched), one with "
        "tracing off. Gateway CPU = the gateway process's CPU per call.",
        "",
        *_paired_table(s, "tracing", "tracing_32", ("off", "on"), "off"),
    ]
    receiver = bench.results.get("tracing", {}).get("receiver", "")
    return [*lines, "", f"Receiver: {receiver}.", ""]


def store_section(bench: Bench) -> list[str]:
    """The Redis store against the in-memory store: calls/s and the gateway's CPU per call, round trips."""
    s = bench.series
    if "store_32/redis" not in s:
        return []
    lines = [
        "## Store (unary with a client token, concurrency 32)",
        "",
        "Two gateways against the same fast upstream, windows alternating: one on a Redis store "
        "(redis-server on the load generator's CPU), one on the in-memory store. The client has a request "
        "limit, so every call is admitted through the store. Gateway CPU = the gateway process's CPU per call.",
        "",
        *_paired_table(s, "store", "store_32", ("memory", "redis"), "in-memory"),
    ]
    store = bench.results.get("store", {})
    if store:
        lines += [
            "",
            f"Store round trips per call (the gateway's gpt_grpc_store_round_trips): "
            f"{store['round_trips_per_call']:.3f}; Redis commands per call, those run inside scripts included "
            f"(INFO commandstats): {store['commands_per_call']:.2f}; over {store['calls']} calls.",
        ]
    return [*lines, ""]


def baseline_section(bench: Bench) -> list[str]:
    """This gateway against the baseline's: calls/s and the gateway's CPU per call, unary and streams."""
    s = bench.series
    if "baseline_unary/current" not in s:
        return []
    info = bench.results["baseline_unary"]
    lines = [
        f"## Against the baseline ({info['ref']}, {info['commit']}), concurrency {BASELINE_CONCURRENCY}",
        "",
        "The gateway of the baseline commit (checked out into a git worktree, same virtualenv) and this one, "
        "same fast upstream, same CPU, windows alternating. Gateway CPU = the gateway process's CPU per call "
        "(the load generator's not included).",
        "",
        "| call | gateway | calls/s | p50 ms | gateway CPU ms/call | calls/s vs baseline | CPU/call vs baseline |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind, what in (("unary", "unary"), ("stream", "stream (20 chunks)")):
        base = s[f"baseline_{kind}/baseline"]
        for label in ("baseline", "current"):
            ser = s[f"baseline_{kind}/{label}"]
            lines.append(
                f"| {what} | {label} | {_fmt(ser.stat('rate'))} | {_fmt(ser.stat('p50_ms'), 2)} "
                f"| {_fmt(ser.stat('server_cpu_ms_per_call'), 3)} | {_fmt(paired_ratios(ser, base), 3)} "
                f"| {_fmt(paired_ratios(ser, base, key='server_cpu_ms_per_call'), 3)} |"
            )
    return [*lines, ""]


def ghz_section(bench: Bench) -> list[str]:
    """The ghz row: each variant's calls/s, latency and CPU per call (the gateway's, the load generator's)."""
    ghz = bench.results.get("ghz")
    if ghz is None:
        return []
    s = bench.series
    c = ghz["concurrency"]
    reference = s.get(f"ghz_{c}/ghz_1")
    lines = [
        f"## ghz (a Go gRPC load generator), unary ChatCompletion, concurrency {c}",
        "",
        f"{ghz['windows']} windows of {ghz['window_s']:g} s per line, every line's windows alternating; "
        "median (min-max). One ghz process per window (`--duration`, `--duration-stop wait`: calls in flight at "
        "the end complete and count). Gateway CPU = the gateway process's CPU from before ghz starts to after it "
        "exits, over the calls OK; upstream CPU = the upstream process's, likewise (ghz lines); load generator CPU = "
        "ghz's own (the Python client's: its process's over the window). "
        f"Pinned: {ghz['pinning']}; one core: {ghz['one_core']}. vs ghz_1 = per round, over the "
        "ghz_1 window of the same round.",
        "",
        "| variant | load generator | connections | upstream | pinning | calls/s | p50 ms | p99 ms "
        "| gateway CPU ms/call | upstream CPU ms/call | load generator CPU ms/call | errors | calls/s vs ghz_1 "
        "| gateway CPU vs ghz_1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    upstreams = {"fast": "fast upstream", "standin": "aiohttp stand-in"}
    generators = {"ghz": "ghz", "python": "bench/load.py (grpc.aio)"}
    for label, v in ghz["variants"].items():
        ser = s[f"ghz_{c}/{label}"]
        vs_rate = _fmt(paired_ratios(ser, reference), 2) if reference is not None else "-"
        vs_cpu = _fmt(paired_ratios(ser, reference, key="server_cpu_ms_per_call"), 2) if reference is not None else "-"
        lines.append(
            f"| `{label}` | {generators[v['generator']]} | {v['connections']} | {upstreams[v['upstream']]} "
            f"| {'one core' if v['one_core'] else 'pinned'} | {_fmt(ser.stat('rate'))} "
            f"| {_fmt(ser.stat('p50_ms'), 2)} | {_fmt(ser.stat('p99_ms'), 2)} "
            f"| {_fmt(ser.stat('server_cpu_ms_per_call'), 3)} | {_fmt(ser.stat('upstream_cpu_ms_per_call'), 3)} "
            f"| {_fmt(ser.stat('client_cpu_ms_per_call'), 3)} | {_errors(ser)} | {vs_rate} | {vs_cpu} |"
        )
    lines += ["", "What each line changes, against `ghz_1`:", ""]
    lines += [f"- `{label}`: {v['shows']}." for label, v in ghz["variants"].items()]
    return [*lines, ""]


def _errors(ser: Series) -> str:
    """Errors over the windows, with their kinds (status codes) when there were any."""
    count = sum(w["errors"] for w in ser.windows)
    return f"{count} {ser.errors}" if ser.errors else str(count)


def transports_report(bench: Bench, meta: dict[str, Any]) -> str:
    raw = bench.series["standin/raw"]
    return "\n".join(
        [
            "# gpt-grpc benchmark: upstream transports",
            "",
            f"{meta['when']} · {meta['machine']} · {meta['pinning']}",
            f"{bench.plan.windows} windows of {bench.plan.window:g} s per figure (after {bench.plan.warmup:g} s "
            "warm-up); median (min-max).",
            "",
            *transport_section(bench),
            f"Stand-in capacity (raw keep-alive HTTP/1.1 client, concurrency 32): {_fmt(raw.stat('rate'))} req/s.",
            "",
        ]
    )


def tls_scale_report(bench: Bench, meta: dict[str, Any]) -> str:
    p = bench.plan
    lines = [
        "# gpt-grpc benchmark: slow upstream over HTTPS",
        "",
        f"{meta['when']} · {meta['machine']} · {meta['pinning']}",
        f"{p.slow_calls:,} ChatCompletion calls at once, each answered after {p.slow_delay:g} s by the fast upstream; "
        "one round per scheme.",
        "",
        "| upstream | calls OK | status codes | failures (status: message) | gateway peak RSS MB | wall s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for scheme, r in bench.results["tls_scale"].items():
        lines.append(
            f"| {scheme} | {r['ok']:,} / {r['calls']:,} | {r['codes']} | {r.get('failures', {})} "
            f"| {r['peak_rss_mb']:.0f} | {r['wall_s']:.1f} |"
        )
    return "\n".join([*lines, ""])


def figures_key_value(t: dict[str, Any]) -> str:
    v = t["value"]
    return "n/a" if v != v else f"{v:,.3f}"


def chart(bench: Bench, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    s = bench.series
    cs = list(bench.plan.concurrencies)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, name, color in (("direct", "direct SDK", "tab:gray"), ("gateway", "gateway", "tab:blue")):
        rates = [s[f"unary_{c}/{label}"].stat("rate") for c in cs]
        ax1.errorbar(
            cs,
            [r["median"] for r in rates],
            yerr=[[r["median"] - r["min"] for r in rates], [r["max"] - r["median"] for r in rates]],
            marker="o",
            capsize=3,
            label=name,
            color=color,
        )
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            vals = [s[f"unary_{c}/{label}"].stat(key)["median"] for c in cs]
            ax2.plot(cs, vals, style, marker="o", color=color, label=f"{name} {key[:3]}")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(cs)
        ax.set_xticklabels([str(c) for c in cs])
        ax.set_xlabel("concurrency (calls in flight)")
        ax.grid(alpha=0.3)
        ax.legend()
    ax1.set_ylabel("unary calls/s")
    ax1.set_title("Throughput (median, min-max)")
    ax2.set_ylabel("latency ms (log)")
    ax2.set_yscale("log")
    ax2.set_title("Latency p50 / p99")
    fig.suptitle("gpt-grpc: SDK called directly vs. through the gateway")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """The tests' redis-server (tests/redis_server.py: loopback, no persistence) for one row."""
    sys.path.insert(0, str(ROOT))
    from tests.redis_server import RedisServer

    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def commandstats(redis: RedisServer) -> dict[str, int]:
    """Commands run since the last RESETSTAT, by name (INFO commandstats)."""
    out: dict[str, int] = {}
    for line in redis.command("INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            calls = dict(kv.split("=") for kv in rest.split(","))["calls"]
            out[name.removeprefix("cmdstat_")] = int(calls)
    return out


def scrape_gauge(port: int, name: str) -> float:
    """One unlabelled gauge of the gateway's /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise RuntimeError(f"{name} not in the metrics")


def redis_commands(redis: RedisServer) -> int:
    """Commands Redis ran since RESETSTAT, but not the INFO / CONFIG of the bench itself."""
    return sum(n for name, n in commandstats(redis).items() if name not in ("info", "config", "ping"))


def create_client(target: str, name: str) -> str:
    """A client with a request limit (so that every call is admitted through the store); its token."""
    import grpc
    from gptgrpc.v1 import gateway_pb2 as pb
    from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        reply = pb_grpc.GPTServiceStub(channel).CreateClient(
            pb.CreateClientRequest(name=name, limits=pb.ClientLimits(requests_per_minute=10**9)),
            metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
            timeout=10,
        )
    return str(reply.token)


def write_row_report(
    out: Path, name: str, section: list[str], bench: Bench, results: dict[str, Any], started: float
) -> None:
    """`--only-<row>`: the row's section as `<name>.md`, its windows as `<name>.json`."""
    plan = bench.plan
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
    }
    head = [
        f"# gpt-grpc benchmark: {name}",
        "",
        f"{meta['when']} · {meta['machine']} · {plan.windows} windows of {plan.window:g} s "
        f"(after {plan.warmup:g} s warm-up); median (min-max).",
        "",
    ]
    (out / f"{name}.md").write_text("\n".join([*head, *section]))
    series = {k: v.to_json() for k, v in bench.series.items()}
    report = {"meta": meta, "results": results, "series": series}
    (out / f"{name}.json").write_text(json.dumps(report, indent=1))
    print(f"report: {out / f'{name}.md'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="gpt-grpc benchmark: direct SDK vs. gateway")
    ap.add_argument("--smoke", action="store_true", help="tiny counts, a few seconds (CI)")
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    ap.add_argument("--windows", type=int, default=None)
    ap.add_argument("--window", type=float, default=None, help="seconds per window")
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1- and 2-worker measurement")
    ap.add_argument("--no-store", action="store_true", help="skip the Redis store row")
    ap.add_argument("--only-store", action="store_true", help="run the Redis store row alone (writes store.md)")
    ap.add_argument("--no-tracing", action="store_true", help="skip the tracing on/off row")
    ap.add_argument("--only-tracing", action="store_true", help="run the tracing on/off row alone (writes tracing.md)")
    ap.add_argument("--no-upstreams", action="store_true", help="skip the upstreams-file row")
    ap.add_argument(
        "--only-upstreams",
        action="store_true",
        help="run the upstreams-file row alone: one upstream from a file vs the shorthand (prints its figures)",
    )
    ap.add_argument("--no-ghz", action="store_true", help="skip the ghz row")
    ap.add_argument(
        "--only-ghz", action="store_true", help="run the ghz row alone: ghz vs the Python load and variants (ghz.md)"
    )
    ap.add_argument("--baseline", default=None, help=f"git ref of the baseline gateway (default {BASELINE_REF})")
    ap.add_argument("--no-baseline", action="store_true", help="skip the row against the baseline gateway")
    ap.add_argument(
        "--only-baseline", action="store_true", help="run the row against the baseline gateway alone (baseline.md)"
    )
    ap.add_argument(
        "--transports", action="store_true", help="only the upstream transport comparison (writes transports.md)"
    )
    ap.add_argument(
        "--tls-scale", action="store_true", help="only the slow upstream over HTTP and HTTPS (writes tls_scale.md)"
    )
    args = ap.parse_args(argv)
    plan = Plan(**vars(SMOKE)) if args.smoke else Plan()
    global IN_PROCESS
    IN_PROCESS = args.smoke
    if args.windows:
        plan.windows = max(3, args.windows)
    if args.window:
        plan.window = args.window
    plan.scaling = plan.scaling and not args.no_scaling
    plan.store = plan.store and not args.no_store
    plan.tracing = plan.tracing and not args.no_tracing
    plan.upstreams = plan.upstreams and not args.no_upstreams
    plan.ghz = plan.ghz and not args.no_ghz
    if args.no_baseline:
        plan.baseline = None
    elif args.baseline:
        plan.baseline = args.baseline
    cpus = plan_cpus()
    if cpus.load:
        os.sched_setaffinity(0, cpus.load)
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(plan, args.out, cpus)
    started = time.time()
    if args.only_store:
        results = bench.run_alone(bench.store_row)
        write_row_report(args.out, "store", store_section(bench), bench, results, started)
        return 0
    if args.only_tracing:
        results = bench.run_alone(bench.tracing_row)
        write_row_report(args.out, "tracing", tracing_section(bench), bench, results, started)
        return 0
    if args.only_baseline:
        plan.baseline = plan.baseline or BASELINE_REF
        results = bench.run_alone(bench.baseline_row)
        write_row_report(args.out, "baseline", baseline_section(bench), bench, results, started)
        return 0
    if args.only_ghz:
        results = bench.run_alone(bench.ghz_row)
        write_row_report(args.out, "ghz", ghz_section(bench), bench, results, started)
        return 0
    if args.only_upstreams:
        results = bench.run_alone(bench.upstreams_row)
        (args.out / "upstreams.json").write_text(
            json.dumps({"results": results, "series": {k: v.to_json() for k, v in bench.series.items()}}, indent=1)
        )
        return 0
    if args.transports:
        bench.run_transports()
    elif args.tls_scale:
        try:
            bench.tls_scale()
        finally:
            bench.stack.close()
    else:
        bench.run()
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
        "pinning": (
            f"servers on CPU {sorted(cpus.server)}, load generator on CPU {sorted(cpus.load)}"
            if cpus.pinned
            else "not pinned (fewer than 2 CPUs)"
        ),
        "smoke": args.smoke,
        "seconds": round(time.time() - started, 1),
    }
    if args.tls_scale:
        (args.out / "tls_scale.md").write_text(tls_scale_report(bench, meta))
        (args.out / "tls_scale.json").write_text(json.dumps({"meta": meta, **bench.results}, indent=1))
        print(f"report: {args.out / 'tls_scale.md'}")
        return 0
    if args.transports:
        (args.out / "transports.md").write_text(transports_report(bench, meta))
        series = {k: v.to_json() for k, v in bench.series.items()}
        (args.out / "transports.json").write_text(json.dumps({"meta": meta, "series": series}, indent=1))
        print(f"report: {args.out / 'transports.md'}")
        return 0
    figures = compute(bench)
    report = markdown(bench, figures, meta)
    (args.out / "report.md").write_text(report)
    data = {
        "meta": meta,
        "plan": vars(plan),
        "figures": figures,
        "series": {k: v.to_json() for k, v in bench.series.items()},
        "results": bench.results,
    }
    (args.out / "report.json").write_text(json.dumps(data, indent=1, default=str))
    drew = chart(bench, args.out / "chart.png")
    print()
    print("ratios (median of rounds, min-max):")
    for t in figures["targets"].values():
        met = "met" if t["met"] else "NOT MET"
        print(f"  {t['label']:<62} {t['op']} {t['bound']:<6g} {figures_key_value(t):>10}  {met}")
    print(f"report: {args.out / 'report.md'}" + ("" if drew else " (no chart: matplotlib is not installed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
