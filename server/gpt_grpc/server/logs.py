"""JSON log lines: one per call on the access logger, plus the server's own events."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

ACCESS = logging.getLogger("gpt_grpc.access")
NOISY = ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "aiohttp.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["msg"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), default=str)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per call is ours; the HTTP libraries' own per-request lines are noise.
    for name in NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def access(fields: dict[str, Any]) -> None:
    """The one line a call writes at the default level."""
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info("call", extra={"fields": fields})


def now() -> float:
    return time.perf_counter()
