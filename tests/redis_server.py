"""A real redis-server on a free loopback port, started (and killed, and restarted) by the tests.

The Makefile installs Debian's redis-server when it is missing (`make debian-packages`);
a machine without it fails these tests loudly rather than skipping them.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

START_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process (no persistence, loopback only)."""

    def __init__(self, port: int | None = None, *, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: run `make debian-packages` (the Makefile does it for test)"
            )
        self.binary = binary
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="gpt-grpc-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        # Persistent: every write is in the append-only file before Redis answers, so a
        # kill -9 and a restart on the same directory lose nothing acknowledged.
        self.persistent = persistent

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *aof, "--dir", str(self.dir)]
        self.proc = subprocess.Popen(
            [self.binary, *args, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as c:
                c.sendall(b"PING\r\n")
                if c.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING in time")

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients (the fault the gateway must ride out)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        """SIGSTOP: the connections stay open and nothing answers (a hung server, not a dead one)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def command(self, *args: str) -> bytes:
        """One command in RESP, its raw reply (enough for FLUSHALL and INFO)."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as c:
            c.sendall(payload.encode())
            c.settimeout(0.5)
            chunks = []
            with contextlib.suppress(TimeoutError):
                while True:
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        return b"".join(chunks)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
