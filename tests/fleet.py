"""A fleet on loopback: N gateway replicas (real processes), optionally nginx in front.

    async with Fleet(standin.base_url, replicas=3, nginx=True) as fleet:
        channel = grpc.aio.insecure_channel(fleet.target)      # through nginx
        ...
        fleet.replicas[0].served("ChatCompletion")            # calls that replica logged
        fleet.replicas[1].kill()                              # SIGKILL, as a crash would

Each replica is `python -m gpt_grpc.server --port 0 --metrics-port 0` in its own process
group, its JSON log (one access line per call) in a file of the fleet's temporary
directory; the ports it picked are read from its start-up log lines, so replicas never race
for a port. nginx runs the shipped deploy/nginx/gpt-grpc.conf, rewritten only where a test
must (listen address, replica list, log directory), under a main configuration of its own
(`daemon off`, temporary prefix, pid and error log in the temporary directory), so no
system nginx or its files are involved. Every wait is bounded; stopping is SIGTERM, then
SIGKILL after a bound. Extra arguments and environment (a shared store's URL, say) apply to
every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import ADMIN_TOKEN, TEST_KEY

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "deploy" / "nginx" / "gpt-grpc.conf"
LOOPBACK = "127.0.0.1"
STARTUP_SECONDS = 30.0
STOP_SECONDS = 10.0
POLL_SECONDS = 0.05
NGINX_PORT_TRIES = 3

_LISTENING = re.compile(r"gpt-grpc listening on \S+:(\d+)")
_METRICS = re.compile(r"metrics on http://[^:]+:(\d+)/metrics")


class FleetError(Exception):
    """A replica or nginx did not start (the message carries the end of its log)."""


def free_port() -> int:
    """A port that was free on loopback a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def nginx_binary() -> str:
    """The nginx executable (Debian installs it in /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise FleetError("nginx is not installed: `make debian-packages` installs it")
    return found


def _tail(path: Path, max_bytes: int = 4000) -> str:
    try:
        return path.read_bytes()[-max_bytes:].decode("utf-8", "replace")
    except OSError:
        return ""


class _Process:
    """A child in its own process group, its output in a file."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")
        self.proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash or the OOM killer would."""
        self._signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_SECONDS)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """sig to the group, up to STOP_SECONDS to exit, then SIGKILL."""
        self.signal(sig)
        self.reap()

    def signal(self, sig: signal.Signals) -> None:
        if self.alive:
            self._signal(sig)

    def reap(self) -> None:
        """Wait up to STOP_SECONDS for the exit a signal asked for, then SIGKILL."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_SECONDS)
        self.kill()
        self._log.close()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


@dataclass
class Replica:
    """One gateway process of the fleet."""

    index: int
    process: _Process
    port: int = 0
    metrics_port: int = 0

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.alive

    def kill(self) -> None:
        self.process.kill()

    def log(self) -> str:
        return _tail(self.process.log_path, max_bytes=1 << 30)

    def access_lines(self) -> list[dict[str, Any]]:
        """The replica's access log: one JSON object per finished call."""
        lines = []
        for line in self.log().splitlines():
            if '"gpt_grpc.access"' in line:
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))
        return lines

    def served(self, method: str, status: str | None = "OK") -> int:
        """Calls of this method (e.g. "ChatCompletion") the replica finished, with this status (None: any)."""
        return sum(
            1 for e in self.access_lines() if e.get("method") == method and (status is None or e["status"] == status)
        )

    async def metric(self, name: str) -> float:
        """The sum of a Prometheus sample over its labels (e.g. gpt_grpc_calls_in_flight)."""
        url = f"http://{LOOPBACK}:{self.metrics_port}/metrics"
        text = await asyncio.to_thread(_get, url)
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


@dataclass
class Nginx:
    """nginx in front of the replicas, on loopback."""

    port: int
    process: _Process
    prefix: Path
    conf: Path = field(default_factory=Path)

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def error_log(self) -> Path:
        return self.prefix / "logs" / "error.log"

    @property
    def access_log(self) -> Path:
        return self.prefix / "logs" / "gpt-grpc.access.log"

    def access_lines(self) -> list[str]:
        return _tail(self.access_log, max_bytes=1 << 30).splitlines()


def render_nginx_conf(shipped: str, listen: str, replicas: Sequence[str], log_dir: Path) -> str:
    """The shipped configuration with the listen address, the replicas and the log directory replaced.

    Everything else (timeouts, retries, error pages, keepalive) stays as shipped: that is what
    the tests check. The `server` lines of `upstream gpt_grpc` become one per replica, with the
    parameters (max_fails...) of the first shipped line.
    """
    block = re.search(r"^upstream gpt_grpc \{\n(.*?)^\}", shipped, re.MULTILINE | re.DOTALL)
    if block is None:
        raise FleetError("deploy/nginx/gpt-grpc.conf has no `upstream gpt_grpc` block")
    servers = re.findall(r"^(\s*)server\s+\S+(.*?);$", block.group(1), re.MULTILINE)
    if not servers:
        raise FleetError("upstream gpt_grpc lists no server")
    indent, params = servers[0]
    body = re.sub(r"^\s*server\s+\S+.*?;\n", "", block.group(1), flags=re.MULTILINE)
    lines = "".join(f"{indent}server {r}{params};\n" for r in replicas)
    out = shipped[: block.start(1)] + lines + body + shipped[block.end(1) :]
    out, listens = re.subn(r"^(\s*)listen\s+\S+\s+http2;", rf"\g<1>listen {listen} http2;", out, flags=re.MULTILINE)
    if listens != 1:
        raise FleetError(f"expected one `listen ... http2;` line in the shipped config, found {listens}")
    return out.replace("/var/log/nginx/", f"{log_dir}/")


def _nginx_main_conf(prefix: Path, include: Path) -> str:
    temp = {name: prefix / "temp" / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    return f"""daemon off;
master_process on;
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {include};
}}
"""


class Fleet:
    """Gateway replicas on loopback, and nginx in front when asked; an async context manager."""

    def __init__(
        self,
        upstream_url: str,
        replicas: int = 3,
        *,
        nginx: bool = False,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        admin_token: str = ADMIN_TOKEN,
        api_key: str = TEST_KEY,
    ) -> None:
        if replicas < 1:
            raise ValueError("a fleet has at least one replica")
        self.upstream_url = upstream_url
        self.count = replicas
        self.with_nginx = nginx
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.admin_token = admin_token
        self.api_key = api_key
        self.replicas: list[Replica] = []
        self.nginx: Nginx | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="gpt-grpc-fleet-"))

    # -- addresses ------------------------------------------------------------------------

    @property
    def target(self) -> str:
        """Where clients call: nginx when it runs, else the first replica."""
        return self.nginx.target if self.nginx is not None else self.replicas[0].target

    @property
    def addresses(self) -> list[str]:
        return [r.target for r in self.replicas]

    @property
    def ipv4_target(self) -> str:
        """All replicas as one gRPC target, for client-side balancing: ipv4:127.0.0.1:p1,127.0.0.1:p2,..."""
        return "ipv4:" + ",".join(self.addresses)

    # -- life cycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Fleet:
        try:
            await self.start()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def start(self) -> None:
        self.replicas = [self._spawn(i) for i in range(self.count)]
        await asyncio.gather(*(self._wait_replica(r) for r in self.replicas))
        if self.with_nginx:
            await self._start_nginx()

    def stop(self) -> None:
        """Stop nginx (SIGQUIT: graceful) and every replica (SIGTERM: drain) together."""
        processes = [r.process for r in self.replicas]
        if self.nginx is not None:
            self.nginx.process.signal(signal.SIGQUIT)
            processes.insert(0, self.nginx.process)
        for replica in self.replicas:
            replica.process.signal(signal.SIGTERM)
        for process in processes:
            process.reap()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _replica_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GPT_GRPC_"))}
        env.update(
            PYTHONUNBUFFERED="1",
            OPENAI_API_KEY=self.api_key,
            OPENAI_BASE_URL=self.upstream_url,
            GPT_GRPC_ADMIN_TOKEN=self.admin_token,
            GPT_GRPC_LOG_LEVEL="INFO",  # the access log is how tests see who served a call
        )
        env.update(self.extra_env)
        return env

    def _spawn(self, index: int) -> Replica:
        argv = [sys.executable, "-m", "gpt_grpc.server", "--host", LOOPBACK, "--port", "0", "--metrics-port", "0"]
        process = _Process([*argv, *self.args], self._replica_env(), self._tmp / f"replica-{index}.log")
        return Replica(index, process)

    async def _wait_replica(self, replica: Replica) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_SECONDS
        while not (replica.port and replica.metrics_port):
            if not replica.alive:
                raise FleetError(f"replica {replica.index} exited at start:\n{replica.log()[-4000:]}")
            if loop.time() > deadline:
                raise FleetError(f"replica {replica.index} not listening after {STARTUP_SECONDS:g}s")
            text = replica.log()
            if m := _LISTENING.search(text):
                replica.port = int(m.group(1))
            if m := _METRICS.search(text):
                replica.metrics_port = int(m.group(1))
            await asyncio.sleep(POLL_SECONDS)
        await wait_serving(replica.target, deadline - loop.time())

    async def _start_nginx(self) -> None:
        binary = nginx_binary()
        prefix = self._tmp / "nginx"
        for sub in ("logs", "temp"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        shipped = NGINX_CONF.read_text()
        last = ""
        for _ in range(NGINX_PORT_TRIES):  # the port is picked, then bound by nginx: it may be taken in between
            port = free_port()
            conf = prefix / "gpt-grpc.conf"
            conf.write_text(render_nginx_conf(shipped, f"{LOOPBACK}:{port}", self.addresses, prefix / "logs"))
            main = prefix / "nginx.conf"
            main.write_text(_nginx_main_conf(prefix, conf))
            argv = [binary, "-p", str(prefix), "-c", str(main), "-e", str(prefix / "logs" / "error.log")]
            process = _Process(argv, dict(os.environ), prefix / "logs" / "stdout.log")
            nginx = Nginx(port, process, prefix, conf)
            try:
                await wait_serving(nginx.target, STARTUP_SECONDS, process)
            except FleetError:
                last = _tail(nginx.error_log)
                process.stop()
                if "Address already in use" in last:
                    continue
                raise FleetError(f"nginx did not start:\n{last}") from None
            self.nginx = nginx
            return
        raise FleetError(f"nginx found no free port in {NGINX_PORT_TRIES} tries:\n{last}")


async def wait_serving(target: str, timeout: float, process: _Process | None = None) -> None:
    """Until grpc.health.v1 at target says SERVING (bounded by timeout; a dead process fails at once)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process is not None and not process.alive:
                raise FleetError(f"process for {target} exited")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if loop.time() > deadline:
                raise FleetError(f"{target} not SERVING after {timeout:g}s")
            await asyncio.sleep(POLL_SECONDS)
