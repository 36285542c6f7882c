"""CLI: run the stand-in upstream until SIGINT/SIGTERM.

python -m tests.standin --host 127.0.0.1 --port 8000 [--api-key K ...]
    [--fault-rate 0.2 --fault-seed 1 --fault-kinds rate_limit server_error ...]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from .app import Standin
from .faults import DEFAULT_RANDOM_DELAY, DEFAULT_RANDOM_KINDS, FAULT_KINDS


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.standin",
        description="OpenAI-compatible stand-in upstream for tests, demos and benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="bind port; 0 picks a free one")
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="accepted API key (repeatable); without it any Bearer key is accepted",
    )
    parser.add_argument("--fault-rate", type=float, default=0.0, help="fraction of requests to fault")
    parser.add_argument("--fault-seed", type=int, default=None, help="seed for the random faults")
    parser.add_argument(
        "--fault-kinds",
        nargs="+",
        default=None,
        metavar="KIND",
        help=f"kinds to draw from (space or comma separated; default {','.join(DEFAULT_RANDOM_KINDS)}); "
        f"known: {','.join(sorted(FAULT_KINDS))}",
    )
    parser.add_argument(
        "--fault-delay",
        type=float,
        default=DEFAULT_RANDOM_DELAY,
        help="seconds used by random slow/slow_stream faults",
    )
    parser.add_argument(
        "--max-recorded",
        type=int,
        default=10_000,
        help="keep at most this many recorded requests (0 = unbounded)",
    )
    parser.add_argument("--port-file", type=Path, default=None, help="write the bound port here once ready")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    kinds: list[str] | None = None
    if args.fault_kinds:
        kinds = [k for item in args.fault_kinds for k in item.split(",") if k]
    standin = Standin(
        host=args.host,
        port=args.port,
        api_keys=args.api_keys,
        max_recorded=args.max_recorded or None,
    )
    if args.fault_rate:
        standin.set_random_faults(args.fault_rate, kinds, args.fault_seed, delay=args.fault_delay)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await standin.start()
    try:
        if args.port_file is not None:
            args.port_file.write_text(f"{standin.port}\n")
        print(f"gpt-grpc-standin listening on {standin.base_url}", flush=True)
        await stop.wait()
    finally:
        await standin.stop()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = _parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except ValueError as exc:  # bad fault kinds/rate: report like an argparse error
        print(f"gpt-grpc-standin: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
