"""A minimal, fast OpenAI-compatible upstream for benchmarks.

The project's stand-in (tests.standin, aiohttp) is built for fault
injection and request recording; it counts tokens per request and goes
through aiohttp's machinery, so it answers a few thousand requests a second.
A benchmark of the gateway needs an upstream that is never the bottleneck:
this one is a raw asyncio Protocol speaking HTTP/1.1 with keep-alive and
answering every ``POST .../chat/completions`` with a fixed, realistic
completion (JSON) or a fixed SSE stream (role chunk, N content chunks, finish
chunk, usage chunk, ``[DONE]``), chunked like OpenAI's.

    python bench/fast_upstream.py --port 0 --port-file P [--delay 30] [--chunks 20]

``--delay`` holds every answer that long (the slow-upstream capacity test);
``--tls-cert``/``--tls-key`` serve HTTPS (bench/run.py --tls-scale).
``GET /_bench/stats`` returns {"requests": n, "open_connections": m}.
It binds loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import signal
import socket
import ssl
import sys
from pathlib import Path

MODEL = "gpt-4o-mini"
CONTENT_WORDS = 20
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')


def completion_body(content: str, model: str = MODEL) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion",
            "created": 1_750_000_000,
            "model": model,
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 19,
                "completion_tokens": 21,
                "total_tokens": 40,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            },
            "service_tier": "default",
        },
        separators=(",", ":"),
    ).encode()


def stream_events(pieces: list[str], model: str = MODEL) -> list[bytes]:
    base = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": 1_750_000_000,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_bench",
        "usage": None,
    }

    def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + json.dumps({**base, "choices": [choice]}, separators=(",", ":")).encode() + b"\n\n"

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": p}) for p in pieces]
    events.append(chunk({}, "stop"))
    usage = {
        "prompt_tokens": 19,
        "completion_tokens": len(pieces),
        "total_tokens": 19 + len(pieces),
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }
    last = {**base, "choices": [], "usage": usage}
    events.append(b"data: " + json.dumps(last, separators=(",", ":")).encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


def _chunked(events: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


class Answers:
    """The fixed responses, built once."""

    def __init__(self, chunks: int) -> None:
        pieces = [f"word{i} " for i in range(chunks)]
        body = completion_body("".join(pieces).rstrip())
        self.unary = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"x-request-id: req_bench\r\nopenai-processing-ms: 1\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"x-request-id: req_bench\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        self.stream_events = stream_events(pieces)
        self.stream = self.stream_head + _chunked(self.stream_events)
        self.not_found = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


class Stats:
    requests = 0
    open_connections = 0


class UpstreamProtocol(asyncio.Protocol):
    __slots__ = ("answers", "buf", "delay", "loop", "transport")

    def __init__(self, answers: Answers, delay: float) -> None:
        self.answers = answers
        self.delay = delay
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        Stats.open_connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        Stats.open_connections -= 1

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            lower = head.lower()
            length = 0
            at = lower.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = lower.find(b"\r\n", at + 2)
                length = int(lower[at + 17 : stop if stop >= 0 else len(lower)])
            total = end + 4 + length
            if len(buf) < total:
                return
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        line = head[: head.find(b"\r\n")]
        Stats.requests += 1
        if line.startswith(b"POST ") and b"/chat/completions" in line:
            answer = self.answers.stream if _STREAM_TRUE.search(body) else self.answers.unary
        elif line.startswith(b"GET /_bench/stats"):
            payload = json.dumps({"requests": Stats.requests, "open_connections": Stats.open_connections}).encode()
            answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
                len(payload),
                payload,
            )
        else:
            answer = self.answers.not_found
        if self.delay > 0 and line.startswith(b"POST "):
            self.loop.call_later(self.delay, self._write, answer)
        else:
            self._write(answer)

    def _write(self, answer: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(
    host: str, port: int, delay: float, chunks: int, port_file: Path | None, tls: ssl.SSLContext | None = None
) -> None:
    loop = asyncio.get_running_loop()
    answers = Answers(chunks)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = await loop.create_server(lambda: UpstreamProtocol(answers, delay), sock=sock, backlog=4096, ssl=tls)
    bound = sock.getsockname()[1]
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(f"{bound}\n")
        tmp.replace(port_file)
    print(f"fast upstream on {'https' if tls else 'http'}://{host}:{bound}/v1 (delay {delay}s)", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", type=Path, default=None)
    p.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    p.add_argument("--chunks", type=int, default=CONTENT_WORDS, help="content chunks per stream")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--tls-cert", type=Path, default=None, help="certificate chain (PEM): serve HTTPS")
    p.add_argument("--tls-key", type=Path, default=None, help="its private key (PEM)")
    args = p.parse_args(argv)
    tls = None
    if args.tls_cert is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("fast_upstream binds loopback only")
    raise_open_file_limit()
    run = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            pass
    run(serve(args.host, args.port, args.delay, args.chunks, args.port_file, tls))


if __name__ == "__main__":
    main()
