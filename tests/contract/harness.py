#!/usr/bin/env python3
"""Run a command against a live gateway whose upstream is the stand-in.

    python tests/contract/harness.py [options] -- COMMAND [ARGS...]

Starts the stand-in upstream (``python -m tests.standin``) and the gateway
(``gpt-grpc-server``) on free loopback ports, waits until the stand-in answers
``GET /_standin/health`` and the gateway's grpc.health.v1 reports SERVING, then
runs COMMAND with these variables set:

    GPT_GRPC_TARGET       127.0.0.1:<gateway port>
    STANDIN_URL           http://127.0.0.1:<stand-in port>
    GPT_GRPC_ADMIN_TOKEN  the gateway's admin token

With --tls the gateway serves TLS only, with certificates made for the run
(openssl, in a temporary directory: a CA, a server certificate for 127.0.0.1, a
client certificate from the same CA, and a "rogue" client certificate from a CA
the gateway does not trust); --mtls also requires client certificates from that
CA. Both add:

    GPT_GRPC_TLS_MODE        tls or mtls
    GPT_GRPC_TLS_CA          PEM file of the CA that signed the gateway's certificate
    GPT_GRPC_TLS_CERT        PEM client certificate (trusted by the gateway under --mtls)
    GPT_GRPC_TLS_KEY         its private key
    GPT_GRPC_TLS_ROGUE_CERT  PEM client certificate from a CA the gateway does not trust
    GPT_GRPC_TLS_ROGUE_KEY   its private key

With --replicas N (default 1) N gateways are started, each on its own port and with
Prometheus metrics on another, all in front of the same stand-in, for client-side load
balancing tests; GPT_GRPC_TARGET is the first one and these are added:

    GPT_GRPC_TARGETS      127.0.0.1:<port 1>,127.0.0.1:<port 2>,...  (one per replica)
    GPT_GRPC_METRICS_URLS http://127.0.0.1:<metrics port 1>/metrics,...  (same order)

Each replica's gpt_grpc_calls_total then tells which replica served how many calls.

All processes are stopped afterwards, whatever happens (SIGTERM, then SIGKILL
after --stop-timeout seconds). The exit status is COMMAND's; 3 when the services
could not be started. Only the standard library, grpcio(-health-checking) and
the openssl command (for --tls/--mtls) are used; run it with the project's venv
Python.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
EXIT_STARTUP = 3
LOOPBACK = "127.0.0.1"


class StartupError(Exception):
    """A service did not become ready."""


def free_port() -> int:
    """A port that was free on loopback a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class Service:
    """One child process in its own process group, logging to a file."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() reaches its children too
            cwd=ROOT,
        )

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise StartupError(f"{self.name} exited with status {code} during startup")

    def stop(self, timeout: float) -> None:
        """SIGTERM the process group, wait up to timeout, then SIGKILL it."""
        try:
            if self.proc.poll() is None:
                self._signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    print(f"harness: {self.name} ignored SIGTERM for {timeout:g}s", file=sys.stderr)
            # Also kill what is left of the group (children that outlived the leader).
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def log_tail(self, max_bytes: int = 8000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode("utf-8", "replace")


def wait_until(what: str, ready: Callable[[], bool], services: Sequence[Service], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error = "not tried"
    while True:
        for s in services:
            s.check_alive()
        try:
            if ready():
                return
            last_error = "not ready"
        except Exception as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise StartupError(f"{what} not ready after {timeout:g}s ({last_error})")
        time.sleep(0.1)


def standin_healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/_standin/health", timeout=2) as resp:
        return bool(resp.status == 200)


def gateway_serving(target: str, tls: dict[str, str] | None = None) -> bool:
    """Whether the gateway's grpc.health.v1 says SERVING (over TLS, with the client certificate, when tls is given)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls is None:
        channel = grpc.insecure_channel(target)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(tls["GPT_GRPC_TLS_CA"]).read_bytes(),
            private_key=Path(tls["GPT_GRPC_TLS_KEY"]).read_bytes(),
            certificate_chain=Path(tls["GPT_GRPC_TLS_CERT"]).read_bytes(),
        )
        channel = grpc.secure_channel(target, credentials)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        res = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        return bool(res.status == health_pb2.HealthCheckResponse.SERVING)


def server_argv(port: int) -> list[str]:
    exe = Path(sys.executable).with_name("gpt-grpc-server")
    if exe.exists():
        return [str(exe), "--host", LOOPBACK, "--port", str(port)]
    found = shutil.which("gpt-grpc-server")
    if found:
        return [found, "--host", LOOPBACK, "--port", str(port)]
    return [sys.executable, "-m", "gpt_grpc.server", "--host", LOOPBACK, "--port", str(port)]


def make_certificates(d: Path) -> dict[str, str]:
    """Test certificates (EC P-256, valid 2 days) made with openssl in d; returns the GPT_GRPC_TLS_* paths.

    ca.pem signs server.pem (127.0.0.1, localhost) and client.pem; rogue-ca.pem, which the
    gateway does not trust, signs rogue-client.pem.
    """
    d.mkdir(parents=True, exist_ok=True)

    def openssl(*argv: str) -> None:
        try:
            subprocess.run(["openssl", *argv], cwd=d, check=True, capture_output=True, timeout=60)
        except FileNotFoundError:
            raise StartupError("--tls/--mtls need the openssl command") from None
        except subprocess.CalledProcessError as exc:
            raise StartupError(f"openssl {argv[0]} failed: {exc.stderr.decode(errors='replace')}") from None

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", *key, "-days", "2", "-subj", f"/CN=gpt-grpc harness {ca}",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout", f"{ca}.key", "-out", f"{ca}.pem")  # fmt: skip
    (d / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    )
    (d / "client.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
    )
    leaves = (("server", "ca", "server"), ("client", "ca", "client"), ("rogue-client", "rogue-ca", "client"))
    for name, ca, ext in leaves:
        openssl("req", *key, "-subj", f"/CN=gpt-grpc harness {name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{ext}.ext", "-out", f"{name}.pem")  # fmt: skip
    return {
        "GPT_GRPC_TLS_CA": str(d / "ca.pem"),
        "GPT_GRPC_TLS_CERT": str(d / "client.pem"),
        "GPT_GRPC_TLS_KEY": str(d / "client.key"),
        "GPT_GRPC_TLS_ROGUE_CERT": str(d / "rogue-client.pem"),
        "GPT_GRPC_TLS_ROGUE_KEY": str(d / "rogue-client.key"),
    }


@contextlib.contextmanager
def services(args: argparse.Namespace, log_dir: Path) -> Iterator[dict[str, str]]:
    """Start the stand-in and the gateway; yield the variables for the command."""
    api_key = "sk-test-" + secrets.token_hex(12)
    admin_token = args.admin_token or ("admin-" + secrets.token_hex(16))
    started: list[Service] = []
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GPT_GRPC_"))}
    base_env["PYTHONUNBUFFERED"] = "1"
    try:
        standin_port = free_port()
        standin_url = f"http://{LOOPBACK}:{standin_port}"
        standin = Service(
            "standin",
            [sys.executable, "-m", "tests.standin", "--host", LOOPBACK, "--port", str(standin_port),
             "--api-key", api_key],
            base_env,
            log_dir,
        )  # fmt: skip
        started.append(standin)
        wait_until("stand-in", lambda: standin_healthy(standin_url), started, args.startup_timeout)

        gateway_env = dict(base_env)
        gateway_env.update(
            OPENAI_API_KEY=api_key,
            OPENAI_BASE_URL=f"{standin_url}/v1",
            GPT_GRPC_ADMIN_TOKEN=admin_token,
        )
        tls: dict[str, str] | None = None
        tls_args: list[str] = []
        if args.tls:
            tls = make_certificates(log_dir / "pki")
            pki = log_dir / "pki"
            tls_args = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")]
            if args.tls == "mtls":
                tls_args += ["--tls-client-ca", tls["GPT_GRPC_TLS_CA"]]
            tls["GPT_GRPC_TLS_MODE"] = args.tls
        targets: list[str] = []
        metrics_urls: list[str] = []
        for index in range(args.replicas):
            port = free_port()
            argv = server_argv(port) + tls_args
            if args.replicas > 1:
                metrics_port = free_port()
                argv += ["--metrics-port", str(metrics_port)]
                metrics_urls.append(f"http://{LOOPBACK}:{metrics_port}/metrics")
            name = "gateway" if args.replicas == 1 else f"gateway-{index}"
            started.append(Service(name, argv, gateway_env, log_dir))
            targets.append(f"{LOOPBACK}:{port}")
        for target in targets:
            wait_until(f"gateway {target}", lambda t=target: gateway_serving(t, tls), started, args.startup_timeout)

        fleet = {"GPT_GRPC_TARGETS": ",".join(targets), "GPT_GRPC_METRICS_URLS": ",".join(metrics_urls)}
        yield {
            "GPT_GRPC_TARGET": targets[0],
            "STANDIN_URL": standin_url,
            "GPT_GRPC_ADMIN_TOKEN": admin_token,
            **(fleet if args.replicas > 1 else {}),
            **(tls or {}),
        }
    finally:
        for s in reversed(started):
            s.stop(args.stop_timeout)


def print_logs(log_dir: Path) -> None:
    for log in sorted(log_dir.glob("*.log")):
        text = log.read_bytes()[-8000:].decode("utf-8", "replace")
        print(f"----- {log.stem} log (last 8000 bytes) -----\n{text}", file=sys.stderr)


def run_command(argv: Sequence[str], env: dict[str, str], cwd: Path, timeout: float | None) -> int:
    proc = subprocess.Popen(argv, env=env, cwd=cwd, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"harness: command still running after {timeout:g}s: stopping it", file=sys.stderr)
        return 124
    except KeyboardInterrupt:
        return 130
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness.py",
        description="Start the stand-in and the gateway on loopback, run a command against them, stop them.",
        epilog="Example: python tests/contract/harness.py --cwd clients/go -- "
        "go test -tags contract ./internal/contract/",
    )
    p.add_argument("--cwd", type=Path, default=Path.cwd(), help="directory to run the command in")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="seconds for each service to be ready")
    p.add_argument("--stop-timeout", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds the command may run")
    p.add_argument("--admin-token", default=None, help="admin token (default: random)")
    p.add_argument(
        "--replicas",
        type=_positive,
        default=1,
        help="gateways to start (exports GPT_GRPC_TARGETS and GPT_GRPC_METRICS_URLS when above 1)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--tls",
        dest="tls",
        action="store_const",
        const="tls",
        default=None,
        help="serve TLS with certificates made for the run (exports GPT_GRPC_TLS_*)",
    )
    mode.add_argument(
        "--mtls",
        dest="tls",
        action="store_const",
        const="mtls",
        help="like --tls, and require client certificates from the run's CA (mutual TLS)",
    )
    p.add_argument("--show-logs", action="store_true", help="print the services' logs even on success")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    return p


def default_options(**overrides: object) -> argparse.Namespace:
    """The harness's options with their defaults (and overrides), for services() used as a library."""
    args = build_parser().parse_args([])
    for name, value in overrides.items():
        if not hasattr(args, name):
            raise TypeError(f"unknown harness option {name!r}")
        setattr(args, name, value)
    return args


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        p.error("give the command to run after --")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    # Turn SIGTERM into KeyboardInterrupt so that the finally blocks stop the services.
    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    with tempfile.TemporaryDirectory(prefix="gptgrpc-harness-") as tmp:
        log_dir = Path(tmp)
        try:
            with services(args, log_dir) as extra_env:
                mode = {"tls": " (TLS)", "mtls": " (mutual TLS)"}.get(args.tls or "", "")
                gateways = extra_env.get("GPT_GRPC_TARGETS", extra_env["GPT_GRPC_TARGET"])
                print(
                    f"harness: gateway {gateways}{mode}, stand-in {extra_env['STANDIN_URL']}; "
                    f"running: {' '.join(args.command)}",
                    file=sys.stderr,
                    flush=True,
                )
                env = {**os.environ, **extra_env}
                code = run_command(args.command, env, args.cwd.resolve(), args.timeout)
        except StartupError as exc:
            print(f"harness: {exc}", file=sys.stderr)
            print_logs(log_dir)
            return EXIT_STARTUP
        except KeyboardInterrupt:
            print("harness: interrupted; services stopped", file=sys.stderr)
            return 130
        if code != 0 or args.show_logs:
            print_logs(log_dir)
        print(f"harness: command exited with status {code}; services stopped", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
