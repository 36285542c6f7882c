"""Settings that survive a restart: one JSON file, replaced atomically.

Write a temporary file beside it (a random name created exclusively, never
through a symlink, mode 0600: it holds the API key), fsync it, rename it over
the old one, fsync the directory. A crash at any moment
leaves the old file or the new one, never a mix. A file that cannot be read
or parsed stops start-up: guessing would send prompts somewhere unintended.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from .errors import GatewayError
from .retry import RetryPolicy
from .settings import Settings, plain_fields
from .upstreams import SOURCE_CONFIGURE, parse_configured

FORMAT_VERSION = 1
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class StateFileError(Exception):
    """The state file exists but cannot be used."""


class StateFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> Settings | None:
        """The saved settings, None when there is no file yet."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateFileError(f"cannot read state file {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(raw)
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported version {data.get('version')!r}")
            return _settings_from_json(data["settings"])
        except RecursionError:  # nested deeper than the JSON parser goes
            raise StateFileError(
                f"state file {self.path} is corrupt (nested too deeply); fix or remove it to start from the environment"
            ) from None
        except GatewayError as exc:
            raise StateFileError(f"state file {self.path} holds an invalid upstream set: {exc.message}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateFileError(
                f"state file {self.path} is corrupt ({exc}); fix or remove it to start from the environment"
            ) from None

    def save(self, settings: Settings) -> None:
        """Replace the file atomically with `settings`."""
        payload = json.dumps({"version": FORMAT_VERSION, "settings": _settings_to_json(settings)}).encode()
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        # A random name, created here and now (O_EXCL) and never through a symlink
        # (O_NOFOLLOW): nobody can plant a file or a link where the key is written.
        tmp = directory / f".{self.path.name}.{secrets.token_hex(16)}.tmp"
        fd = os.open(tmp, _CREATE_FLAGS, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by umask; be explicit
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)  # rename replaces a symlink at the path, never writes through it
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _settings_to_json(s: Settings) -> dict[str, Any]:
    # An upstream set from Configure is kept (keys too: the file is 0600, as for api_key); one
    # from the upstreams file is not: the file is read again at start.
    upstreams = s.upstreams if s.upstreams is not None and s.upstreams.source == SOURCE_CONFIGURE else None
    return {
        "upstreams": upstreams.to_mapping(lambda u: u.api_key) if upstreams is not None else None,
        "api_key": s.api_key,
        **plain_fields(s),
        "generation": s.generation,
    }


def _optional_str(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError("expected a string")


def _settings_from_json(d: dict[str, Any]) -> Settings:
    retry = d["retry"]
    return Settings(
        api_key=_optional_str(d["api_key"]),
        endpoint=str(d["endpoint"]),
        organization=_optional_str(d["organization"]),
        project=_optional_str(d["project"]),
        default_model=str(d["default_model"]),
        request_timeout=float(d["request_timeout"]),
        retry=RetryPolicy(
            max_attempts=int(retry["max_attempts"]),
            initial_backoff=float(retry["initial_backoff"]),
            max_backoff=float(retry["max_backoff"]),
        ),
        generation=int(d["generation"]),
        upstreams=parse_configured(d["upstreams"], label="upstream") if d.get("upstreams") else None,
    )
