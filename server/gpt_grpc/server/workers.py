"""Several server processes on one port, and the event loop they run on.

One gateway process is one Python interpreter: it uses one core. On a
machine with more, `--workers N` starts N worker processes (the same command
line, marked by GPT_GRPC_WORKER) that each bind the port with SO_REUSEPORT;
the kernel spreads new connections across them. The parent only supervises:
it forwards SIGTERM/SIGINT (each worker drains its own calls), and if a
worker dies on its own it stops the others and exits non-zero so that the
process manager restarts the whole gateway.

What is per process, and so per worker: GetUsage and the Prometheus metrics
(worker i serves them on --metrics-port + i), the retry budget, and
in-flight admission (--max-in-flight is per worker). Settings changed by
Configure reach every worker through the state file, which each worker
watches (so with an admin token, --workers needs --state-file). Per-client
keys (--db) keep their limits and budgets in one process's memory, so they
need --workers 1.

`loop_runner` picks the event loop: uvloop when installed (grpc.aio runs on
it; it cuts the gateway's CPU per call), else asyncio's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import GatewayServer, ServerConfig

log = logging.getLogger("gpt_grpc.server")

WORKER_ENV = "GPT_GRPC_WORKER"
STATE_POLL_SECONDS = 1.0


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
    if config.db_path:
        return "--db keeps per-client limits in one process's memory: use --workers 1 with it"
    if config.admin_token and not config.state_file:
        return "--workers with an admin token needs --state-file (Configure reaches the workers through it)"
    return None


def as_worker(config: ServerConfig, index: int) -> ServerConfig:
    """The settings of worker `index`: the shared port with SO_REUSEPORT, its own metrics port."""
    metrics_port = config.metrics_port
    if metrics_port:
        metrics_port += index
    return dataclasses.replace(config, reuse_port=True, metrics_port=metrics_port)


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
    for index in range(config.workers):
        env = {**os.environ, WORKER_ENV: str(index)}
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
    return code


async def follow_state_file(server: GatewayServer, load: Callable[[], Any]) -> None:
    """Install settings another worker saved: the state file is checked every second."""
    state = server.state
    if state is None:
        return
    seen = _mtime(state.path)
    while True:
        await asyncio.sleep(STATE_POLL_SECONDS)
        now = _mtime(state.path)
        if now == seen:
            continue
        seen = now
        try:
            settings = await asyncio.to_thread(load)
        except Exception as exc:  # a bad file must not stop serving with the settings in force
            log.error("state file changed but cannot be used: %s", exc)
            continue
        if settings is not None and settings.generation != server.engine.settings.generation:
            server.engine.install(settings)
            log.info("settings from the state file: %r", settings)


def _mtime(path: os.PathLike[str] | str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


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
