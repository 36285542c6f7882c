"""Machinery shared by the fault, budget and overload runs.

`GatewayProcess` runs the real server as a subprocess (`python -m gpt_grpc.server`),
configured from the environment like tests/test_lifecycle.py, with its output in a
log file, its memory readable from /proc and, with GPT_GRPC_DEBUG_TASKS=1, its
debug state (asyncio tasks, calls in flight, upstream pool) on SIGUSR1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

KEY = "sk-campaign-0123456789abcdefghij"
ADMIN_TOKEN = "admin-token-for-campaigns-4b1d-0123456789abcdef"
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)

_POOL = re.compile(
    r"Requests: (?P<active_requests>\d+) active, (?P<queued_requests>\d+) queued \| "
    r"Connections: (?P<active_connections>\d+) active, (?P<idle_connections>\d+) idle"
)
_DEBUG = re.compile(r"debug-state tasks=(?P<tasks>\d+) in_flight=(?P<in_flight>\d+) upstream_pool=(?P<pool>.*)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status_kb(pid: int, name: str) -> int:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM...)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise KeyError(name)


@dataclass(frozen=True)
class DebugState:
    """What the server logs on SIGUSR1 with GPT_GRPC_DEBUG_TASKS=1."""

    tasks: int
    in_flight: int
    # The upstream HTTP pool (None before the first upstream call).
    active_requests: int | None = None
    queued_requests: int | None = None
    active_connections: int | None = None
    idle_connections: int | None = None


class GatewayProcess:
    """The gateway as a subprocess on a free loopback port."""

    def __init__(
        self,
        endpoint: str,
        *args: str,
        api_key: str = KEY,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        fd, path = tempfile.mkstemp(prefix="gpt-grpc-gateway-", suffix=".log")
        self.log_path = Path(path)
        self._log = os.fdopen(fd, "wb")
        full_env = {
            **os.environ,
            "OPENAI_API_KEY": api_key,
            "OPENAI_BASE_URL": endpoint,
            "GPT_GRPC_ADMIN_TOKEN": ADMIN_TOKEN,
            "GPT_GRPC_DEBUG_TASKS": "1",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpt_grpc.server", "--port", str(self.port), *args],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mb(self) -> float:
        return proc_status_kb(self.pid, "VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        """VmHWM: the highest RSS the process ever had."""
        return proc_status_kb(self.pid, "VmHWM") / 1024

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_serving(self, timeout: float = 30.0) -> None:
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log_text()}")
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"gateway not SERVING within {timeout} s:\n{self.log_text()}")
                await asyncio.sleep(0.05)

    async def debug_state(self, timeout: float = 5.0) -> DebugState:
        """Ask the server for its debug line (SIGUSR1) and parse it."""
        before = self.log_text().count("debug-state ")
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.log_text().splitlines() if "debug-state " in line]
            if len(lines) > before:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("the gateway logged no debug-state line (GPT_GRPC_DEBUG_TASKS unset?)")
            await asyncio.sleep(0.02)
        match = _DEBUG.search(lines[-1])
        assert match is not None, lines[-1]
        pool = _POOL.search(match["pool"])
        counts = {k: int(v) for k, v in pool.groupdict().items()} if pool else {}
        return DebugState(tasks=int(match["tasks"]), in_flight=int(match["in_flight"]), **counts)

    async def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then wait up to `timeout` for the exit code (None if still running)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.proc.poll()

    def close(self, keep_log: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()
        if not keep_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


class RssSampler:
    """Samples a process's RSS in the background; keeps the peak."""

    def __init__(self, gateway: GatewayProcess, interval: float = 0.2) -> None:
        self.gateway = gateway
        self.interval = interval
        self.peak_mb = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, KeyError):
                self.peak_mb = max(self.peak_mb, self.gateway.rss_mb())
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
