"""Several server processes on one port, and the event loop they run on.

One gateway process is one Python interpreter: it uses one core. On a
machine with more, `--workers N` starts N worker processes (the same command
line, marked by GPT_GRPC_WORKER) that each bind the port with SO_REUSEPORT;
the kernel spreads new connections across them. The parent only supervises:
it forwards SIGTERM/SIGINT (each worker drains its own calls), and if a
worker dies on its own it stops the others and exits non-zero so that the
process manager restarts the whole gateway.

What the workers share goes through a shared store (--store redis://...),
as for replicas on several machines: clients, limits, budgets, usage and
the settings Configure changes. A SQLite or in-memory store is one process's
memory, so --workers above 1 is refused without a shared store. The
Prometheus metrics of all workers are one scrape: the workers write them to
PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode) and the
parent serves the sum on --metrics-port. Per worker still: the retry budget
and in-flight admission (--max-in-flight is per worker).

`loop_runner` picks the event loop: uvloop when installed (grpc.aio runs on
it; it cuts the gateway's CPU per call), else asyncio's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import ServerConfig

log = logging.getLogger("gpt_grpc.server")

WORKER_ENV = "GPT_GRPC_WORKER"
# prometheus-client's multiprocess mode: each worker writes its metrics here.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SHARED_SCHEMES = ("redis://", "rediss://", "unix://")


def worker_index() -> int | None:
    """This process's worker number, None when it is not a worker."""
    value = os.environ.get(WORKER_ENV)
    return int(value) if value and value.isdigit() else None


def check(config: ServerConfig) -> str | None:
    """Why `config` cannot run with several workers, or None."""
    if config.workers < 1:
        return "--workers must be at least 1"
    if config.workers == 1:
        return None
    if config.port == 0:
        return "--workers needs a fixed --port (each worker binds the same one)"
    url = config.store_url or ""
    if not url.lower().startswith(SHARED_SCHEMES):
        return (
            "--workers shares clients, limits, usage and settings through a shared store: give "
            "--store redis://host:6379/0 (a SQLite or in-memory store serves one process; see README, "
            "'Running a fleet')"
        )
    return None


def as_worker(config: ServerConfig, index: int) -> ServerConfig:
    """The settings of worker `index`: the shared port with SO_REUSEPORT; the parent serves the metrics."""
    return dataclasses.replace(config, reuse_port=True, metrics_port=None)


def supervise(config: ServerConfig, argv: Sequence[str]) -> int:
    """Run `config.workers` copies of this server; the exit code for the whole gateway."""
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    metrics_dir = tempfile.mkdtemp(prefix="gpt-grpc-metrics-")
    if config.metrics_port is not None:
        port = serve_metrics(metrics_dir, config.metrics_port, config.metrics_host)
        log.info("metrics of all workers on http://%s:%d/metrics", config.metrics_host, port)
    for index in range(config.workers):
        env = {**os.environ, WORKER_ENV: str(index), MULTIPROC_ENV: metrics_dir}
        children.append(subprocess.Popen([sys.executable, "-m", "gpt_grpc.server", *argv], env=env))
    log.info("gpt-grpc: %d workers on %s:%d (pids %s)", config.workers, config.host, config.port,
             ", ".join(str(c.pid) for c in children))  # fmt: skip
    code = 0
    while True:
        running = [c for c in children if c.poll() is None]
        if not running:
            break
        for child in children:
            status = child.poll()
            if status is not None and status != 0 and not stopping:
                log.error("worker %d exited with %d; stopping the others", child.pid, status)
                forward(signal.SIGTERM, None)
                code = 1
        time.sleep(0.1)
    for child in children:
        code = max(code, abs(child.returncode or 0))
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return code


def serve_metrics(directory: str, port: int, host: str) -> int:
    """The workers' metrics summed (prometheus-client multiprocess mode), on a thread; the bound port."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


def loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, None]], None]:
    """asyncio.run or uvloop.run, for --loop auto|uvloop|asyncio."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("gpt-grpc-server: --loop uvloop but uvloop is not installed") from None
        else:
            return uvloop.run  # type: ignore[no-any-return]
    return asyncio.run
