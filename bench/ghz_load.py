"""ghz (github.com/bojand/ghz, a Go gRPC load generator) as one of the bench's load generators.

bench/run.py's ghz row drives unary ChatCompletion through ghz as well as through the project's own
Python client (bench/load.py), so that the gateway's figures do not depend on its own client alone
(issue 12). One window is one ghz process: `--duration` seconds of closed-loop calls at `-c`
concurrency over `--connections` HTTP/2 connections, its JSON summary read into the window shape
bench/load.py reports (calls/s, p50/p99, the gateway's CPU per call, the load generator's own).

The binary is the pinned one `make grpc-tools` builds (tests/tools/tools.mk). It reads the contract
from proto/ (not by reflection: reflection's own RPCs would be counted in the gateway's CPU).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
from pathlib import Path
from typing import Any

from load import MODEL, PROMPT, proc_cpu_seconds  # bench/load.py: the Python load's request, /proc CPU

ROOT = Path(__file__).resolve().parent.parent
GHZ = ROOT / "tests" / "tools" / ".bin" / "ghz"
PROTO = "proto/gptgrpc/v1/gateway.proto"
CALL = "gptgrpc.v1.GPTService/ChatCompletion"
CALL_TIMEOUT = "30s"  # per call, as bench/load.py's default deadline
NS_PER_S = 1e9
NS_PER_MS = 1e6
MS_PER_S = 1e3


def ghz_argv(target: str, *, concurrency: int, connections: int, seconds: float, binary: Path = GHZ) -> list[str]:
    """ghz's command line for one window of unary ChatCompletion, the Python load's request.

    `--duration-stop wait`: the calls in flight when the duration ends complete and are counted, so
    every call the gateway spent CPU on is in the count (with `close`, ghz cuts them and reports
    them as Unavailable; with `ignore` they are dropped but were paid for)."""
    request = {"model": MODEL, "user_message": PROMPT}
    return [
        str(binary),
        "--insecure",
        "--proto", PROTO,
        "--import-paths", "proto",
        "--call", CALL,
        "--data", json.dumps(request),
        "--concurrency", str(concurrency),
        "--connections", str(connections),
        "--duration", f"{round(seconds * MS_PER_S)}ms",
        "--duration-stop", "wait",
        "--timeout", CALL_TIMEOUT,
        "--format", "json",
        target,
    ]  # fmt: skip


def _latency_ms(report: dict[str, Any], percentage: int) -> float:
    for entry in report.get("latencyDistribution") or ():  # null when no call succeeded
        if entry.get("percentage") == percentage:
            return float(entry["latency"]) / NS_PER_MS
    return float("nan")


def parse_report(
    report: dict[str, Any], *, server_cpu_s: float, client_cpu_s: float, upstream_cpu_s: float | None = None
) -> dict[str, Any]:
    """One window from ghz's JSON summary (`--format json`), in bench/load.py's result shape.

    ghz's `count` is every call, `statusCodeDistribution` their codes, `total` the run's wall time
    and `latencyDistribution` the OK calls' latency percentiles, all durations in nanoseconds.
    calls/s counts OK calls only; CPU per call divides the gateway's CPU over the whole ghz run
    (`server_cpu_s`), the upstream's (`upstream_cpu_s`, when known) and ghz's own (`client_cpu_s`)
    by the OK calls. Errors are counted by status
    code (bounded: ghz's messages carry ports)."""
    codes: dict[str, int] = {str(k): int(v) for k, v in (report.get("statusCodeDistribution") or {}).items()}
    count = int(report.get("count", 0))
    ok = codes.get("OK", 0)
    seconds = float(report.get("total", 0)) / NS_PER_S
    per_call = MS_PER_S / ok if ok else float("nan")
    options = report.get("options") or {}
    window = {
        "concurrency": int(options.get("concurrency", 0)),
        "connections": int(options.get("connections", 1)),
        "calls": ok,
        "errors": count - ok,
        "rate": ok / seconds if seconds > 0 else 0.0,
        "p50_ms": _latency_ms(report, 50),
        "p99_ms": _latency_ms(report, 99),
        "server_cpu_ms_per_call": server_cpu_s * per_call,
        "client_cpu_ms_per_call": client_cpu_s * per_call,
        "upstream_cpu_ms_per_call": None if upstream_cpu_s is None else upstream_cpu_s * per_call,
        "cpu_ms_per_call": (server_cpu_s + client_cpu_s) * per_call,
        "ttfc_p50_ms": None,
        "ttfc_p99_ms": None,
    }
    error_kinds = {code: n for code, n in codes.items() if code != "OK"}
    return {"windows": [window], "error_kinds": error_kinds, "total_calls": count}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_window(spec: dict[str, Any], cpus: set[int] | None, timeout: float) -> dict[str, Any]:
    """One ghz process (pinned to `cpus`, or to the spec's own `cpus`): a warm-up of `warmup` s when
    the spec asks for one (not counted), then the window; its figures as bench/load.py reports them.

    The gateway's CPU (`server_pids`) and the upstream's (`upstream_pids`) are read from /proc before
    ghz starts and after it exits; ghz's own CPU is this process's children's rusage over the run
    (ghz is the only child reaped then)."""
    if not GHZ.exists():
        raise RuntimeError(f"{GHZ} is missing: run `make grpc-tools` (or pass --no-ghz)")
    pin = set(spec["cpus"]) if spec.get("cpus") else cpus
    concurrency, connections = int(spec["concurrency"]), int(spec.get("connections", 1))

    def argv(seconds: float) -> list[str]:
        return ghz_argv(spec["target"], concurrency=concurrency, connections=connections, seconds=seconds)

    if float(spec.get("warmup", 0)) > 0:
        _run(argv(float(spec["warmup"])), pin, timeout)
    pids = [int(p) for p in spec.get("server_pids", [])]
    upstream_pids = [int(p) for p in spec.get("upstream_pids", [])]
    before = proc_cpu_seconds(pids), proc_cpu_seconds(upstream_pids), _children_cpu_s()
    out = _run(argv(float(spec["window"])), pin, timeout)
    after = proc_cpu_seconds(pids), proc_cpu_seconds(upstream_pids), _children_cpu_s()
    server_cpu, upstream_cpu, client_cpu = (b - a for a, b in zip(before, after, strict=True))
    return parse_report(
        json.loads(out),
        server_cpu_s=server_cpu,
        client_cpu_s=client_cpu,
        upstream_cpu_s=upstream_cpu if upstream_pids else None,
    )


def _run(argv: list[str], cpus: set[int] | None, timeout: float) -> bytes:
    result = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        timeout=timeout,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"ghz failed ({result.returncode}): {result.stderr.decode()[-2000:]}")
    return result.stdout
