"""Load generator: one scenario per process, JSON result on stdout.

    python bench/load.py '{"kind": "gateway_unary", "target": "127.0.0.1:50051", ...}'
    python bench/load.py - < spec.json

Closed-loop: `concurrency` workers each issue calls back to back. After a
warm-up, the run is cut into `windows` windows of `window` seconds; every
figure is reported per window (calls/s, p50/p99 latency, time to first chunk)
so the caller can take the median and min-max. Every loop is bounded in time
and in count (`max_calls`). Errors are counted, never retried.

Kinds:
  direct_unary / direct_stream   the application path: openai.AsyncOpenAI,
                                 `client.chat.completions.create(...)` parsed
                                 into the SDK's models, default HTTP pool.
  gateway_unary / gateway_stream the same calls through the gateway (grpc.aio,
                                 generated stubs).
  count_tokens / health          CountTokens on a text / grpc health Check.
  local_count                    gpt_grpc.tokens.count_text in this process.
  raw_http                       a raw HTTP/1.1 keep-alive client (capacity of
                                 the upstream itself).
  slow                           `calls` ChatCompletions all at once; reports
                                 how many ended OK and the codes of the rest.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Say hello in twenty words."
MODEL = "gpt-4o-mini"
API_KEY = "sk-bench-0123456789abcdefghijklmnop"


def raise_open_file_limit(want: int = 65536) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):  # not allowed to raise the hard limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Recorder:
    """Per-window latencies; window -1 is the warm-up and is thrown away."""

    def __init__(self, windows: int) -> None:
        self.window = -1
        self.latencies: list[list[float]] = [[] for _ in range(windows)]
        self.first_chunk: list[list[float]] = [[] for _ in range(windows)]
        self.errors: list[int] = [0] * windows
        self.error_kinds: dict[str, int] = {}
        self.calls = 0
        self.stop = False

    def ok(self, latency: float, first_chunk: float | None = None) -> None:
        w = self.window
        if w >= 0:
            self.latencies[w].append(latency)
            if first_chunk is not None:
                self.first_chunk[w].append(first_chunk)

    def error(self, exc: BaseException) -> None:
        kind = type(exc).__name__
        code = getattr(exc, "code", None)
        if callable(code):
            try:
                kind = str(code())
            except Exception:
                pass
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        if self.window >= 0:
            self.errors[self.window] += 1


Call = Callable[[], Awaitable[float | None]]


def proc_cpu_seconds(pids: list[int]) -> float:
    """utime + stime of processes (their threads included), from /proc."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


async def closed_loop(
    call: Call,
    concurrency: int,
    warmup: float,
    window: float,
    windows: int,
    max_calls: int,
    server_pids: list[int] | None = None,
) -> dict[str, Any]:
    rec = Recorder(windows)
    pids = server_pids or []

    async def worker() -> None:
        while not rec.stop and rec.calls < max_calls:
            rec.calls += 1
            start = time.perf_counter()
            try:
                first = await call()
            except Exception as exc:
                rec.error(exc)
                continue
            end = time.perf_counter()
            rec.ok(end - start, None if first is None else first - start)

    gc.collect()
    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    durations: list[float] = []
    client_cpu: list[float] = []
    server_cpu: list[float] = []
    try:
        await asyncio.sleep(warmup)
        for w in range(windows):
            started = time.perf_counter()
            c0, s0 = time.process_time(), proc_cpu_seconds(pids)
            rec.window = w
            await asyncio.sleep(window)
            rec.window = -1
            durations.append(time.perf_counter() - started)
            client_cpu.append(time.process_time() - c0)
            server_cpu.append(proc_cpu_seconds(pids) - s0)
    finally:
        rec.stop = True
        _, pending = await asyncio.wait(tasks, timeout=30)
        for t in pending:
            t.cancel()
    out: list[dict[str, Any]] = []
    for w in range(windows):
        lat = rec.latencies[w]
        ttfc = rec.first_chunk[w]
        calls = max(1, len(lat))
        out.append(
            {
                "concurrency": concurrency,
                "calls": len(lat),
                "errors": rec.errors[w],
                "rate": len(lat) / durations[w],
                "client_cpu_ms_per_call": client_cpu[w] / calls * 1e3,
                "server_cpu_ms_per_call": server_cpu[w] / calls * 1e3,
                "cpu_ms_per_call": (client_cpu[w] + server_cpu[w]) / calls * 1e3,
                "p50_ms": percentile(lat, 50) * 1e3,
                "p99_ms": percentile(lat, 99) * 1e3,
                "ttfc_p50_ms": percentile(ttfc, 50) * 1e3 if ttfc else None,
                "ttfc_p99_ms": percentile(ttfc, 99) * 1e3 if ttfc else None,
            }
        )
    # Every call started, warm-up included (the bench divides store commands by it).
    return {"windows": out, "error_kinds": rec.error_kinds, "total_calls": rec.calls}


# --------------------------------------------------------------------------- call makers


def direct_calls(spec: dict[str, Any]) -> tuple[Call, Call]:
    import openai

    client = openai.AsyncOpenAI(base_url=spec["base_url"], api_key=API_KEY, max_retries=0)
    messages = [{"role": "user", "content": PROMPT}]

    async def unary() -> None:
        completion = await client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
        if not completion.choices[0].message.content:
            raise RuntimeError("empty answer")

    async def stream() -> float | None:
        first: float | None = None
        parts = []
        chunks = await client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in chunks:
            if chunk.choices and chunk.choices[0].delta.content:
                if first is None:
                    first = time.perf_counter()
                parts.append(chunk.choices[0].delta.content)
        if not parts:
            raise RuntimeError("empty stream")
        return first

    return unary, stream


def _channels(target: str, count: int) -> list[Any]:
    import grpc

    # A distinct channel argument per channel: each gets its own subchannel,
    # hence its own HTTP/2 connection.
    return [
        grpc.aio.insecure_channel(
            target,
            options=[("grpc.use_local_subchannel_pool", 1), ("bench.channel", i)],
        )
        for i in range(count)
    ]


def gateway_calls(spec: dict[str, Any]) -> dict[str, Call]:
    from gptgrpc.v1 import gateway_pb2 as pb
    from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channels = _channels(spec["target"], int(spec.get("channels", 1)))
    stubs = [pb_grpc.GPTServiceStub(c) for c in channels]
    health_stubs = [health_pb2_grpc.HealthStub(c) for c in channels]
    turn = [0]

    def stub() -> Any:
        turn[0] += 1
        return stubs[turn[0] % len(stubs)]

    chat = pb.ChatCompletionRequest(model=MODEL, user_message=PROMPT)
    stream_req = pb.StreamChatCompletionRequest(model=MODEL, user_message=PROMPT)
    text = spec.get("text", "")
    count = pb.CountTokensRequest(model=MODEL, text=text)
    check = health_pb2.HealthCheckRequest()
    timeout = float(spec.get("deadline", 30.0))
    # A client token (the store's admission path) when the spec names one.
    metadata = (("authorization", f"Bearer {spec['token']}"),) if spec.get("token") else None

    async def unary() -> None:
        reply = await stub().ChatCompletion(chat, timeout=timeout, metadata=metadata)
        if not reply.content:
            raise RuntimeError("empty answer")

    async def stream() -> float | None:
        first: float | None = None
        parts = []
        async for event in stub().StreamChatCompletion(stream_req, timeout=timeout):
            if event.HasField("delta") and event.delta.content:
                if first is None:
                    first = time.perf_counter()
                parts.append(event.delta.content)
        if not parts:
            raise RuntimeError("empty stream")
        return first

    async def count_tokens() -> None:
        reply = await stub().CountTokens(count, timeout=timeout)
        if text and not reply.token_count:
            raise RuntimeError("no tokens")

    async def health() -> None:
        turn[0] += 1
        await health_stubs[turn[0] % len(health_stubs)].Check(check, timeout=timeout)

    return {"unary": unary, "stream": stream, "count_tokens": count_tokens, "health": health}


def raw_http_call(spec: dict[str, Any]) -> Callable[[], Call]:
    """A factory of per-worker raw keep-alive connections (one per worker)."""
    from urllib.parse import urlsplit

    url = urlsplit(spec["base_url"])
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}]}).encode()
    request = (
        b"POST %s/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s"
        % (url.path.encode(), url.netloc.encode(), API_KEY.encode(), len(body), body)
    )

    def make() -> Call:
        conn: list[Any] = []

        async def call() -> None:
            if not conn:
                conn.extend(await asyncio.open_connection(url.hostname, url.port))
            reader, writer = conn
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            at = head.lower().find(b"content-length:")
            length = int(head[at + 15 : head.find(b"\r\n", at)])
            await reader.readexactly(length)

        return call

    return make


# --------------------------------------------------------------------------- scenarios


async def run_closed(spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec["kind"]
    args = (
        int(spec["concurrency"]),
        float(spec["warmup"]),
        float(spec["window"]),
        int(spec["windows"]),
        int(spec.get("max_calls", 5_000_000)),
        [int(p) for p in spec.get("server_pids", [])],
    )
    if kind.startswith("direct_"):
        unary, stream = direct_calls(spec)
        return await closed_loop(unary if kind == "direct_unary" else stream, *args)
    if kind == "raw_http":
        make = raw_http_call(spec)
        per_worker = iter([make() for _ in range(args[0])])
        # Each worker gets its own connection: wrap the closed loop's call.
        calls: dict[int, Call] = {}

        async def call() -> None:
            task = id(asyncio.current_task())
            if task not in calls:
                calls[task] = next(per_worker)
            await calls[task]()

        return await closed_loop(call, *args)
    gw = gateway_calls(spec)
    name = {"gateway_unary": "unary", "gateway_stream": "stream"}.get(kind, kind)
    return await closed_loop(gw[name], *args)


def run_local_count(spec: dict[str, Any]) -> dict[str, Any]:
    """count_text in this process: same windows, concurrency 1."""
    from gpt_grpc import tokens

    text = spec["text"]
    tokens.count_text(text, MODEL)  # loads the encoding
    out = []
    deadline_total = time.perf_counter() + spec["warmup"]
    while time.perf_counter() < deadline_total:
        tokens.count_text(text, MODEL)
    for _ in range(int(spec["windows"])):
        lat: list[float] = []
        started = time.perf_counter()
        end = started + float(spec["window"])
        while time.perf_counter() < end and len(lat) < 100_000:
            t0 = time.perf_counter()
            tokens.count_text(text, MODEL)
            lat.append(time.perf_counter() - t0)
        took = time.perf_counter() - started
        out.append(
            {
                "concurrency": 1,
                "calls": len(lat),
                "errors": 0,
                "rate": len(lat) / took,
                "p50_ms": percentile(lat, 50) * 1e3,
                "p99_ms": percentile(lat, 99) * 1e3,
                "ttfc_p50_ms": None,
                "ttfc_p99_ms": None,
            }
        )
    return {"windows": out, "error_kinds": {}}


async def run_slow(spec: dict[str, Any]) -> dict[str, Any]:
    """`calls` ChatCompletions at once against a slow upstream; how many ended OK."""
    import grpc
    from gptgrpc.v1 import gateway_pb2 as pb
    from gptgrpc.v1 import gateway_pb2_grpc as pb_grpc

    total = int(spec["calls"])
    channels = _channels(spec["target"], int(spec.get("channels", 20)))
    stubs = [pb_grpc.GPTServiceStub(c) for c in channels]
    for c in channels:
        await asyncio.wait_for(c.channel_ready(), 10)
    request = pb.ChatCompletionRequest(model=MODEL, user_message=PROMPT)
    codes: dict[str, int] = {}
    failures: dict[str, int] = {}  # "status: message" (the first 100 characters), e.g. connect failures
    latencies: list[float] = []
    started = time.perf_counter()

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        try:
            reply = await stubs[i % len(stubs)].ChatCompletion(request, timeout=float(spec["deadline"]))
            code = "OK" if reply.content else "EMPTY"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            failure = f"{code}: {(exc.details() or '')[:100]}"
            failures[failure] = failures.get(failure, 0) + 1
        codes[code] = codes.get(code, 0) + 1
        latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(one(i) for i in range(total)))
    for c in channels:
        await c.close()
    return {
        "calls": total,
        "codes": codes,
        "failures": failures,
        "ok": codes.get("OK", 0),
        "wall_s": time.perf_counter() - started,
        "p50_s": percentile(latencies, 50),
        "max_s": max(latencies) if latencies else None,
    }


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec["kind"]
    if kind == "local_count":
        return run_local_count(spec)
    if kind == "slow":
        return asyncio.run(run_slow(spec))
    return asyncio.run(run_closed(spec))


def main() -> None:
    # The spec comes as an argument, or on stdin with "-" (a 1 MB text is too long for argv).
    spec = json.loads(sys.stdin.read() if sys.argv[1] == "-" else sys.argv[1])
    raise_open_file_limit()
    json.dump(run_spec(spec), sys.stdout)


if __name__ == "__main__":
    main()
