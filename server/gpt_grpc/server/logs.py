"""JSON log lines: one per call on the access logger, plus the server's own events."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any

import orjson

ACCESS = logging.getLogger("gpt_grpc.access")
# A caller-chosen string (a model name, say) is cut to this many characters in a log line.
MAX_LOGGED_CHARS = 256
# Caller-chosen key names (extra_body_json's): at most this many, each cut to MAX_LOGGED_KEY_CHARS.
MAX_LOGGED_KEYS = 32
MAX_LOGGED_KEY_CHARS = 64
NOISY = ("httpx", "httpx2", "httpcore", "httpcore2", "aiohttp.access")


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


# The handler `configure` installed: while it is the only one, an access line is
# written straight to its stream (see `access`).
_handler: logging.StreamHandler[Any] | None = None


def clip(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """`text`, or its first `limit` characters and how long it was: a caller cannot make a line huge."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text)} chars]"


def key_names(keys: tuple[str, ...]) -> list[str]:
    """Key names for a log line (never their values), bounded in number and length."""
    names = [clip(key, MAX_LOGGED_KEY_CHARS) for key in keys[:MAX_LOGGED_KEYS]]
    if len(keys) > MAX_LOGGED_KEYS:
        names.append(f"...[{len(keys)} keys]")
    return names


def configure(level: str = "INFO") -> None:
    global _handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    _handler = handler
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per call is ours; the HTTP libraries' own per-request lines are noise.
    for name in NOISY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def access(fields: dict[str, Any]) -> None:
    """The one line a call writes at the default level.

    Through `logging` it costs ~50 us a call (a LogRecord, the formatter,
    json.dumps, the handler's lock); while the handler `configure` installed is
    the only one on the way, the same JSON line (same keys, same order) is
    written to its stream directly, serialized with orjson.
    """
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    stream = _direct_stream()
    if stream is None:
        ACCESS.info("call", extra={"fields": fields})
        return
    entry = {"ts": round(time.time(), 3), "level": "info", "logger": ACCESS.name, **fields}
    try:
        stream.write(orjson.dumps(entry, default=str, option=orjson.OPT_APPEND_NEWLINE))
        stream.flush()
    except (OSError, ValueError):  # a closed or broken stderr must not fail the call
        pass


def _direct_stream() -> IO[bytes] | None:
    handler = _handler
    if handler is None or ACCESS.handlers or not ACCESS.propagate or handler.level > logging.INFO:
        return None
    if logging.getLogger().handlers != [handler] or handler.filters or ACCESS.filters:
        return None
    text = handler.stream
    raw = getattr(text, "buffer", None)
    if raw is None:
        return None
    text.flush()  # keep the order of lines written through logging
    return raw  # type: ignore[no-any-return]
