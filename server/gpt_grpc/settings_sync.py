"""Configure through the store: one settings record, its generation, every process on the newest.

The record is one JSON document (version 1):

    {"version": 1,
     "settings": {"endpoint": ..., "organization": ..., "project": ..., "default_model": ...,
                  "request_timeout": ..., "retry": {...}},
     "api_key": null | {"sealed": "v1...."} | {"plain": "sk-..."},
     "upstreams": null}

- `api_key` null: no Configure ever set a key; each process uses the key it
  was started with (OPENAI_API_KEY / --api-key-file). A key set by Configure
  is sealed (store/secrets.py) when a secret key is given; a shared store
  never holds it in clear (Configure is refused with SECRET_KEY_MISSING).
- `upstreams` is reserved for the upstream set (issue 13): it travels in the
  same record, so it is swapped with the rest, atomically.

A Configure reads the record, applies the change to it (validated whole,
as before), and writes it back only if its generation did not move meanwhile
(compare-and-set; a lost race is retried on the newer record). Other
processes hear of it from the store (notification, or polling) and install
the new snapshot; a call in flight keeps the snapshot it started with
(engine). With a single-process store, `--state-file` sits beside the
record and persists it across restarts, as it always did.

This module knows nothing of gRPC or Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from .egress import EgressPolicy, origin, resolved_problem
from .errors import FieldViolation, GatewayError, Reason, invalid
from .settings import Settings, SettingsUpdate, apply
from .state import StateFile
from .store.base import SettingsDoc, Store
from .store.secrets import Sealer, SecretKeyError

log = logging.getLogger("gpt_grpc.settings")

DOC_VERSION = 1
API_KEY_PURPOSE = "upstream api_key"
# Compare-and-set attempts of one Configure against concurrent ones elsewhere.
MAX_CAS_ATTEMPTS = 5


class SettingsRecordError(Exception):
    """The stored settings record cannot be used (corrupt, or its key cannot be opened)."""


class SettingsSync:
    """The settings in force in this process, kept in step with the store's record."""

    def __init__(
        self,
        store: Store,
        initial: Settings,
        install: Callable[[Settings], None],
        *,
        sealer: Sealer | None = None,
        state: StateFile | None = None,
        policy: EgressPolicy | None = None,
    ) -> None:
        self.store = store
        self._initial = initial  # the start-up settings (environment, or the state file)
        self._install = install
        self._sealer = sealer
        self._state = state
        self._policy = policy  # the operator's egress policy (egress.py), for what Configure sets
        self._current = initial
        self._seen = 0  # generation of the record last installed (0: none)
        self._lock = asyncio.Lock()

    @property
    def current(self) -> Settings:
        return self._current

    async def start(self) -> Settings:
        """Install the stored record if there is one; then follow the store. Raises SettingsRecordError."""
        doc = await self.store.load_settings()
        if doc is not None:
            self._use(self._resolve(doc), doc.generation)
        self.store.on_settings(self._heard)
        return self._current

    async def apply(self, update: SettingsUpdate) -> Settings:
        """Validate `update` against the newest record, store it, install it; raises GatewayError."""
        if update.api_key is not None and self.store.shared and self._sealer is None:
            raise GatewayError(
                Reason.SECRET_KEY_MISSING,
                "the store is shared, and an upstream key is kept there only encrypted: start every replica "
                "with the same GPT_GRPC_SECRET_KEY (or GPT_GRPC_SECRET_KEY_FILE), e.g. from "
                "`openssl rand -base64 32`, then Configure the api_key again",
            )
        async with self._lock:
            for _ in range(MAX_CAS_ATTEMPTS):
                doc = await self.store.load_settings()
                if doc is None:
                    current, expected, key = self._current, 0, None
                else:
                    current, expected, key = self._decode(doc)
                new = apply(current, update, self._policy)  # raises INVALID_REQUEST, nothing stored
                if self._policy is not None and origin(new.endpoint) != origin(current.endpoint):
                    problem = await resolved_problem(new.endpoint)
                    if problem:
                        raise invalid([FieldViolation("endpoint", problem)])
                if update.api_key is not None:
                    key = self._seal(update.api_key)
                body = _encode(new, key)
                if self._state is not None:
                    await self._save_state(new)
                if await self.store.save_settings(SettingsDoc(new.generation, body), expected):
                    self._use(new, new.generation)
                    return new
            raise GatewayError(
                Reason.STORE_UNAVAILABLE, "the settings kept changing under this Configure; nothing was changed"
            )

    # -- helpers ---------------------------------------------------------------------

    def _heard(self, doc: SettingsDoc) -> None:
        """A record saved elsewhere: install it unless already in force."""
        if doc.generation == self._seen:
            return
        try:
            settings = self._resolve(doc)
        except SettingsRecordError as exc:  # keep serving with the settings in force
            log.error("new settings (generation %d) cannot be used: %s", doc.generation, exc)
            return
        self._use(settings, doc.generation)
        log.info("settings from the store: %r", settings)

    def _use(self, settings: Settings, generation: int) -> None:
        self._current = settings
        self._seen = generation
        self._install(settings)

    def _resolve(self, doc: SettingsDoc) -> Settings:
        return self._decode(doc)[0]

    def _decode(self, doc: SettingsDoc) -> tuple[Settings, int, dict[str, str] | None]:
        """(settings, generation, stored key field) of a record; raises SettingsRecordError."""
        try:
            data = json.loads(doc.body)
            if data.get("version") != DOC_VERSION:
                raise ValueError(f"unsupported version {data.get('version')!r}")
            s = data["settings"]
            retry = s["retry"]
            key_field = data.get("api_key")
            update = SettingsUpdate(
                endpoint=str(s["endpoint"]),
                organization=s["organization"] or "",
                project=s["project"] or "",
                default_model=str(s["default_model"]),
                request_timeout=float(s["request_timeout"]),
                max_attempts=int(retry["max_attempts"]),
                initial_backoff=float(retry["initial_backoff"]),
                max_backoff=float(retry["max_backoff"]),
                api_key=self._open_key(key_field),
            )
            base = Settings(api_key=self._initial.api_key)
            checked = apply(base, update)
        except SecretKeyError as exc:
            raise SettingsRecordError(str(exc)) from exc
        except GatewayError as exc:
            raise SettingsRecordError(f"the stored settings are invalid: {exc.message}") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SettingsRecordError(f"the stored settings record is corrupt ({exc})") from exc
        settings = Settings(
            api_key=checked.api_key,
            endpoint=checked.endpoint,
            organization=checked.organization,
            project=checked.project,
            default_model=checked.default_model,
            request_timeout=checked.request_timeout,
            retry=checked.retry,
            generation=doc.generation,
        )
        return settings, doc.generation, key_field

    def _open_key(self, field: object) -> str | None:
        if field is None:
            return None
        if not isinstance(field, dict):
            raise TypeError("api_key must be an object")
        if "plain" in field:
            return str(field["plain"])
        if self._sealer is None:
            raise SecretKeyError(
                "the store holds an encrypted upstream key and this process has no secret key: "
                "set GPT_GRPC_SECRET_KEY (or GPT_GRPC_SECRET_KEY_FILE) to the one the fleet uses"
            )
        return self._sealer.open(str(field["sealed"]), API_KEY_PURPOSE)

    def _seal(self, key: str) -> dict[str, str]:
        if self._sealer is not None:
            return {"sealed": self._sealer.seal(key, API_KEY_PURPOSE)}
        return {"plain": key}  # a single-process store only (refused above for a shared one)

    async def _save_state(self, settings: Settings) -> None:
        assert self._state is not None
        try:
            await asyncio.to_thread(self._state.save, settings)
        except OSError as exc:
            log.error("could not write the state file: %s", exc.strerror)
            raise GatewayError(Reason.INTERNAL_ERROR, "could not persist the settings; nothing was changed") from None


def _encode(s: Settings, key: dict[str, str] | None) -> bytes:
    settings: dict[str, Any] = {
        "endpoint": s.endpoint,
        "organization": s.organization,
        "project": s.project,
        "default_model": s.default_model,
        "request_timeout": s.request_timeout,
        "retry": {
            "max_attempts": s.retry.max_attempts,
            "initial_backoff": s.retry.initial_backoff,
            "max_backoff": s.retry.max_backoff,
        },
    }
    return json.dumps({"version": DOC_VERSION, "settings": settings, "api_key": key, "upstreams": None}).encode()
