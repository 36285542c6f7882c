"""The bench's ghz row reads ghz's JSON summary right (bench/ghz_load.py) and reports it (bench/run.py).

Pure functions over a summary of the shape ghz v0.120.0 writes with `--format json` (durations in
nanoseconds); `make bench-smoke` (tests/test_bench_smoke.py) runs the real ghz against a gateway.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # bench/ is scripts, not a package: its modules import each other by name
ghz_load = importlib.import_module("ghz_load")
bench_load = importlib.import_module("load")
bench_run = importlib.import_module("run")

MS = 1_000_000  # ns


def ghz_summary(**overrides: Any) -> dict[str, Any]:
    """A ghz --format json summary: 1,000 calls in 2 s over 4 connections, 2 of them Unavailable."""
    report: dict[str, Any] = {
        "date": "2026-12-02T07:41:20Z",
        "endReason": "timeout",
        "options": {"call": "gptgrpc.v1.GPTService/ChatCompletion", "concurrency": 32, "connections": 4},
        "count": 1000,
        "total": 2_000 * MS,
        "average": 30 * MS,
        "fastest": 3 * MS,
        "slowest": 90 * MS,
        "rps": 500.0,
        "errorDistribution": {"rpc error: code = Unavailable desc = closed 127.0.0.1:50252": 2},
        "statusCodeDistribution": {"OK": 998, "Unavailable": 2},
        "latencyDistribution": [
            {"percentage": 10, "latency": 20 * MS},
            {"percentage": 50, "latency": 31_500_000},
            {"percentage": 90, "latency": 60 * MS},
            {"percentage": 99, "latency": 88 * MS},
        ],
        "details": [{"timestamp": "2026-12-02T07:41:19.237441136Z", "latency": 86893695, "error": "", "status": "OK"}],
    }
    return {**report, **overrides}


def test_a_summary_becomes_one_window_of_the_python_loads_shape() -> None:
    result = ghz_load.parse_report(ghz_summary(), server_cpu_s=0.998, client_cpu_s=0.499, upstream_cpu_s=0.2495)
    (window,) = result["windows"]
    assert window["calls"] == 998 and window["errors"] == 2
    assert window["rate"] == pytest.approx(499.0)  # OK calls over ghz's wall time, not ghz's rps (every call)
    assert window["p50_ms"] == pytest.approx(31.5) and window["p99_ms"] == pytest.approx(88.0)
    assert window["server_cpu_ms_per_call"] == pytest.approx(1.0)
    assert window["client_cpu_ms_per_call"] == pytest.approx(0.5)
    assert window["upstream_cpu_ms_per_call"] == pytest.approx(0.25)
    assert window["cpu_ms_per_call"] == pytest.approx(1.5)  # gateway + load generator, as bench/load.py sums
    assert (window["concurrency"], window["connections"]) == (32, 4)
    assert window["ttfc_p50_ms"] is None
    # Errors by status code only: ghz's messages carry ports, unbounded as labels.
    assert result["error_kinds"] == {"Unavailable": 2}
    assert result["total_calls"] == 1000
    json.dumps(result)  # goes into report.json as is


def test_a_window_without_one_call_ok_has_no_rate_latency_or_cost() -> None:
    summary = ghz_summary(
        count=5, statusCodeDistribution={"Unavailable": 5}, latencyDistribution=None, errorDistribution={"x": 5}
    )
    (window,) = ghz_load.parse_report(summary, server_cpu_s=0.01, client_cpu_s=0.01)["windows"]
    assert (window["calls"], window["errors"], window["rate"]) == (0, 5, 0.0)
    assert math.isnan(window["p50_ms"]) and math.isnan(window["server_cpu_ms_per_call"])
    assert window["upstream_cpu_ms_per_call"] is None  # not measured


def test_the_command_line_is_the_python_loads_call() -> None:
    argv = ghz_load.ghz_argv("127.0.0.1:50051", concurrency=32, connections=16, seconds=1.5)
    assert Path(argv[0]).name == "ghz" and argv[-1] == "127.0.0.1:50051"
    flags = dict(itertools.pairwise(argv[1:-1]))  # each flag with the word after it
    assert flags["--call"] == "gptgrpc.v1.GPTService/ChatCompletion"
    assert json.loads(flags["--data"]) == {"model": bench_load.MODEL, "user_message": bench_load.PROMPT}
    assert (flags["--concurrency"], flags["--connections"], flags["--duration"]) == ("32", "16", "1500ms")
    assert flags["--duration-stop"] == "wait"  # calls in flight at the end complete and count
    assert flags["--format"] == "json" and "--insecure" in argv
    assert (BENCH.parent / flags["--proto"]).is_file()


def test_the_report_has_one_line_per_variant_against_ghz_over_one_connection(tmp_path: Path) -> None:
    plan = bench_run.Plan(ghz_variants=("ghz_1", "python", "ghz_standin_one_core"))
    bench = bench_run.Bench(plan, tmp_path, bench_run.Cpus({0}, {1}))
    for label, (cpu, rate) in {"ghz_1": (1.0, 998), "python": (0.8, 1200), "ghz_standin_one_core": (1.6, 600)}.items():
        series = bench_run.Series()
        for _ in range(3):
            ok = {"OK": rate * 2}
            summary = ghz_summary(count=rate * 2, statusCodeDistribution=ok)
            series.add(ghz_load.parse_report(summary, server_cpu_s=cpu * rate * 2 / 1000, client_cpu_s=0.5))
        bench.series[f"ghz_32/{label}"] = series
    bench.results["ghz"] = {
        "concurrency": 32,
        "windows": 3,
        "window_s": 2.0,
        "pinning": "gateway and upstream on CPU [0], load generator on CPU [1]",
        "one_core": "all on CPU [0]",
        "variants": {label: vars(bench_run.GHZ_VARIANTS[label]) for label in plan.ghz_variants},
    }
    text = "\n".join(bench_run.ghz_section(bench))
    assert "## ghz (a Go gRPC load generator), unary ChatCompletion, concurrency 32" in text
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in text.splitlines()
            if line.startswith("| `")}  # fmt: skip
    assert list(rows) == ["`ghz_1`", "`python`", "`ghz_standin_one_core`"]
    assert rows["`ghz_1`"][-2:] == ["1.00 (1.00-1.00)", "1.00 (1.00-1.00)"]
    assert rows["`python`"][-2:] == ["1.20 (1.20-1.20)", "0.80 (0.80-0.80)"]  # calls/s, gateway CPU vs ghz_1
    assert rows["`ghz_standin_one_core`"][:4] == ["ghz", "1", "aiohttp stand-in", "one core"]
    assert rows["`ghz_standin_one_core`"][7] == "1.600 (1.600-1.600)"  # gateway CPU ms/call
    assert bench_run.ghz_section(bench_run.Bench(plan, tmp_path, bench_run.Cpus(None, None))) == []  # row not run
