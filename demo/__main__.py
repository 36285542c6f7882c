"""`make demo`: the stand-in upstream, the gateway, and a client, all on loopback.

Run as `python -m demo` from the repository root. Starts both servers as real
processes on free ports, then shows a streamed chat, a token count, a Configure
call and one mapped error, and stops them.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gpt_grpc_client import Client, GatewayError, gateway_pb2

# The stand-in is a test double in tests/standin: started from the repository root.
ROOT = Path(__file__).resolve().parents[1]

DEMO_KEY = "sk-demo-" + "0123456789abcdefghij"
SCRAPE_EXCERPT = (
    "gpt_grpc_calls_total",
    "gpt_grpc_upstream_attempts_total",
    "gpt_grpc_tokens_total",
    "gpt_grpc_cost_usd_total",
    "gpt_grpc_calls_in_flight",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"demo: {url} did not come up")


def _wait_serving(target: str, deadline: float) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.05)
    raise SystemExit("demo: the gateway did not become SERVING")


@contextmanager
def _process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _enqueue_fault(standin_root: str, fault: dict[str, object]) -> None:
    body = json.dumps({"faults": [fault]}).encode()
    request = urllib.request.Request(
        f"{standin_root}/_standin/faults", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5):
        pass


def main() -> None:
    standin_port, gateway_port, metrics_port = _free_port(), _free_port(), _free_port()
    standin_root = f"http://127.0.0.1:{standin_port}"
    target = f"127.0.0.1:{gateway_port}"
    admin_token = secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "OPENAI_API_KEY": DEMO_KEY,
        "OPENAI_BASE_URL": f"{standin_root}/v1",
        "GPT_GRPC_ADMIN_TOKEN": admin_token,
        "GPT_GRPC_PORT": str(gateway_port),
        "GPT_GRPC_METRICS_PORT": str(metrics_port),
        "GPT_GRPC_LOG_LEVEL": "WARNING",
    }
    py = sys.executable
    standin_cmd = [py, "-m", "tests.standin", "--host", "127.0.0.1", "--port", str(standin_port)]
    with _process(standin_cmd, env), _process([py, "-m", "gpt_grpc.server"], env):
        deadline = time.monotonic() + 30
        _wait_http(f"{standin_root}/_standin/health", deadline)
        _wait_serving(target, deadline)
        print(f"stand-in upstream on {standin_root}, gateway on {target}\n")

        with Client(target, admin_token=admin_token) as client:
            print("1. StreamChatCompletion (deltas as they arrive):")
            stream = client.stream_chat(
                model="gpt-4o-mini",
                system_message="You are a helpful assistant.",
                user_message="tell me how the gateway streams answers to its callers",
            )
            print("   ", end="")
            for delta in stream:
                print(delta, end="", flush=True)
                time.sleep(0.03)  # the stand-in is instant; slow down so the stream is visible
            summary = stream.summary
            assert summary is not None
            print(
                f"\n    finish={gateway_pb2.FinishReason.Name(summary.finish_reason)} "
                f"tokens={summary.usage.total_tokens} "
                f"cost=${summary.cost_usd:.8f} attempts={summary.attempts}\n"
            )

            counted = client.count_tokens_detailed("The quick brown fox jumps over the lazy dog.", model="gpt-4o")
            print(f"2. CountTokens: {counted.token_count} tokens ({counted.encoding}), offline\n")

            conf = client.configure(default_model="gpt-4.1-mini", max_attempts=4)
            print(
                f"3. Configure (admin token): default_model={conf.default_model} "
                f"max_attempts={conf.retry_policy.max_attempts} key={conf.api_key_masked} "
                f"generation={conf.generation}\n"
            )

            _enqueue_fault(standin_root, {"kind": "insufficient_quota"})
            print("4. A mapped error (the upstream answers 429 insufficient_quota):")
            try:
                client.chat_completion(user_message="hello?")
            except GatewayError as err:
                print(f"    {err.code.name} reason={err.reason} http_status={err.metadata.get('http_status')}")
                print(f"    message: {err.message}\n")
            else:
                raise SystemExit("demo: expected an error")

            usage = client.get_usage()
            print(f"5. GetUsage: {usage.total.requests} requests, ${usage.total.cost_usd:.8f} since start\n")

        print(f"6. One scrape of http://127.0.0.1:{metrics_port}/metrics (excerpt):")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(SCRAPE_EXCERPT):
                    print(f"    {line}")


if __name__ == "__main__":
    main()
