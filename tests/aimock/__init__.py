"""aimock as an upstream: an OpenAI-compatible mock that nobody on the project wrote.

aimock (npm `@copilotkit/aimock`, pinned in tests/aimock/package.json and its
lock, installed by `make aimock` into tests/aimock/node_modules) runs as its
own Node process on 127.0.0.1, on a port the OS picks, started from a config
file by its `aimock` CLI. Tests program it through its control API (`POST
/__aimock/fixtures`, `POST /__aimock/reset`) and read what it saw from its
request journal (`GET /__aimock/journal`) and its Prometheus metrics
(`GET /metrics`): see the package's README and skills/write-fixtures/SKILL.md.

Only the gateway's key is accepted (aimock's `auth.apiKeys`): a call that
reaches a fixture proves the gateway sent it.
"""

from __future__ import annotations

import collections
import json
import os
import re
import select
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["CHAT_PATH", "Aimock", "JournalEntry"]

DIR = Path(__file__).parent
CLI = DIR / "node_modules" / "@copilotkit" / "aimock" / "dist" / "aimock-cli.js"
PACKAGE = DIR / "node_modules" / "@copilotkit" / "aimock" / "package.json"
VERSION = "1.43.0"  # as pinned in package.json
CHAT_PATH = "/v1/chat/completions"
START_SECONDS = 30.0
STOP_SECONDS = 5.0
CONTROL_SECONDS = 10.0
_LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))")
_KEPT_OUTPUT_LINES = 200

JournalEntry = Mapping[str, Any]


class Aimock:
    """One aimock process; `start()` blocks until it listens (bounded), `stop()` ends it."""

    def __init__(self, api_key: str, workdir: Path) -> None:
        self.api_key = api_key
        self.workdir = workdir
        self.url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=_KEPT_OUTPUT_LINES)

    @property
    def base_url(self) -> str:
        """The OpenAI base URL the gateway is pointed at."""
        return self.url + "/v1"

    def start(self) -> None:
        if not CLI.exists():
            raise RuntimeError(f"{CLI} is missing: run `make aimock` (make test does it first)")
        installed = json.loads(PACKAGE.read_text())["version"]
        if installed != VERSION:
            raise RuntimeError(f"aimock {installed} is installed, {VERSION} is pinned: run `make aimock`")
        config = self.workdir / "aimock.json"
        config.write_text(
            json.dumps({"llm": {"logLevel": "warn"}, "metrics": True, "auth": {"apiKeys": [self.api_key]}})
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIMOCK_")}
        self._proc = subprocess.Popen(
            ["node", str(CLI), "--config", str(config), "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
        )
        assert self._proc.stdout is not None
        stdout = self._proc.stdout
        give_up = time.monotonic() + START_SECONDS
        buffered = b""
        while not self.url:
            left = give_up - time.monotonic()
            if left <= 0 or self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"aimock did not start: {buffered.decode(errors='replace')[-2000:]}")
            ready, _, _ = select.select([stdout], [], [], left)
            if ready:
                chunk = os.read(stdout.fileno(), 4096)
                buffered += chunk
                found = _LISTENING.search(buffered.decode(errors="replace"))
                if found:
                    self.url = found.group(1)
        self.output.extend(buffered.decode(errors="replace").splitlines())
        # Keep reading what it prints, so that a full pipe never stalls it.
        threading.Thread(target=self._drain, args=(stdout,), daemon=True).start()

    def _drain(self, stdout: Any) -> None:
        for line in iter(stdout.readline, b""):
            self.output.append(line.decode(errors="replace").rstrip())

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_SECONDS)
        if proc.stdout is not None:
            proc.stdout.close()

    # -- the control API -------------------------------------------------------------

    async def _control(self, method: str, path: str, body: object = None) -> Any:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        timeout = aiohttp.ClientTimeout(total=CONTROL_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.request(method, self.url + path, json=body, headers=headers) as response:
                text = await response.text()
                if response.status != 200:
                    raise RuntimeError(f"aimock {method} {path}: {response.status} {text}")
                return json.loads(text) if response.content_type == "application/json" else text

    async def reset(self) -> None:
        """Drop every fixture, the journal and any chaos."""
        await self._control("POST", "/__aimock/reset")

    async def add(self, fixtures: Sequence[Mapping[str, Any]]) -> None:
        """Add fixtures (aimock's JSON fixture form: match, response and options)."""
        added = await self._control("POST", "/__aimock/fixtures", {"fixtures": list(fixtures)})
        assert added == {"added": len(fixtures)}, added

    async def journal(self, client_request_id: str) -> list[JournalEntry]:
        """The chat requests aimock journaled for one gateway call (the gateway sends its id as X-Client-Request-Id)."""
        entries = await self._control("GET", "/__aimock/journal?path=" + CHAT_PATH)
        return [e for e in entries if e["headers"].get("x-client-request-id") == client_request_id]

    async def requests_by_status(self) -> dict[str, float]:
        """aimock_requests_total of chat requests by status label ("destroyed": the client left first)."""
        text = await self._control("GET", "/metrics")
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "aimock_requests_total" and sample.labels.get("path") == CHAT_PATH:
                    status = sample.labels["status"]
                    counts[status] = counts.get(status, 0.0) + sample.value
        return counts
