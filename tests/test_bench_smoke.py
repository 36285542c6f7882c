"""`make bench-smoke` keeps working: tiny counts, and only the report's shape is checked (no timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_bench_smoke_writes_a_well_formed_report(tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = (out / "report.md").read_text()
    for heading in ("# gpt-grpc benchmark", "## Chat completions", "## CountTokens", "## Ratios and targets"):
        assert heading in report
    assert "| direct SDK unary |" in report and "| gateway unary |" in report
    data = json.loads((out / "report.json").read_text())
    targets = data["figures"]["targets"]
    assert set(targets) == {
        "unary_32", "unary_256", "stream_32", "ttfc_1", "count_1k", "count_1m", "slow_ok", "slow_rss", "ready",
        "upstreams_32",
    }  # fmt: skip
    for target in targets.values():
        assert isinstance(target["met"], bool) and isinstance(target["value"], float)
    assert data["results"]["slow"]["rounds"] and "ratios" in run.stdout
    # The ghz row (one variant, one window): ghz ran against the gateway and its calls were all OK.
    assert "## ghz (a Go gRPC load generator)" in report and "| `ghz_1` | ghz | 1 |" in report
    (window,) = data["series"]["ghz_32/ghz_1"]["windows"]
    assert window["calls"] > 0 and window["errors"] == 0 and window["server_cpu_ms_per_call"] > 0
