"""Configure through the store: one settings record, its generation, every process on the newest.

The record is one JSON document (version 1):

    {"version": 1,
     "settings": {"endpoint": ..., "organization": ..., "project": ..., "default_model": ...,
                  "request_timeout": ..., "retry": {...}},
     "api_key": null | {"sealed": "v1...."} | {"plain": "sk-..."},
     "upstreams": null | {"cleared": true} | {"upstream": [...], "fallbacks": {...}}}

- `api_key` null: no Configure ever set a key; each process uses the key it
  was started with (OPENAI_API_KEY / --api-key-file). A key set by Configure
  is sealed (store/secrets.py) when a secret key is given; a shared store
  never holds it in clear (Configure is refused with SECRET_KEY_MISSING).
- `upstreams` null: no Configure ever set an upstream set; each process uses
  the set it was started with (its --upstreams file, or the shorthand).
  `{"cleared": true}`: Configure went back to the shorthand. Otherwise the
  set Configure gave, in the upstreams file's shape, each upstream's
  `api_key` sealed like the single key (never in clear on a shared store).
  It travels in the same record, so it is swapped with the rest, atomically.

A record read back (at start, from another replica, or from the single
process's store) is checked as strictly as a Configure: under the operator's
egress policy too, so an edited or foreign record cannot point the gateway
where this process's policy refuses.

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
from .settings import Settings, SettingsUpdate, apply, plain_fields
from .state import StateFile
from .store.base import SettingsDoc, Store
from .store.secrets import Sealer, SecretKeyError
from .upstreams import SOURCE_CONFIGURE, UpstreamSet, UpstreamSpec, parse_configured, resolved_problems

log = logging.getLogger("gpt_grpc.settings")

DOC_VERSION = 1
API_KEY_PURPOSE = "upstream api_key"
# Each key of an upstream set is sealed for its upstream's name: it opens as that upstream's key only.
UPSTREAM_KEY_PURPOSE = "upstream {name} api_key"
CLEARED = {"cleared": True}
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
        keys_given = update.api_key is not None or update.upstreams is not None
        if keys_given and self.store.shared and self._sealer is None:
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
                    current, expected, key, upstreams = self._current, 0, None, None
                else:
                    current, expected, key, upstreams = self._decode(doc)
                new = apply(current, update, self._policy)  # raises INVALID_REQUEST, nothing stored
                await self._check_resolved(new, current)
                if update.api_key is not None:
                    key = self._seal(update.api_key)
                if update.upstreams is not None and new.upstreams is not None:
                    upstreams = new.upstreams.to_mapping(self._seal_upstream)
                elif update.clear_upstreams:
                    upstreams = CLEARED
                body = _encode(new, key, upstreams)
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

    async def _check_resolved(self, new: Settings, current: Settings) -> None:
        """What a moved endpoint's (or a new upstream set's) hosts resolve to, under the egress policy."""
        if self._policy is None:
            return
        violations = []
        if origin(new.endpoint) != origin(current.endpoint):
            problem = await resolved_problem(new.endpoint)
            if problem:
                violations.append(FieldViolation("endpoint", problem))
        if new.upstreams is not None and new.upstreams is not current.upstreams:
            violations += await resolved_problems(new.upstreams, "upstreams.upstreams")
        if violations:
            raise invalid(violations)

    def _resolve(self, doc: SettingsDoc) -> Settings:
        return self._decode(doc)[0]

    def _decode(self, doc: SettingsDoc) -> tuple[Settings, int, dict[str, str] | None, dict[str, Any] | None]:
        """(settings, generation, stored key field, stored upstreams field) of a record; raises SettingsRecordError."""
        try:
            data = json.loads(doc.body)
            if data.get("version") != DOC_VERSION:
                raise ValueError(f"unsupported version {data.get('version')!r}")
            s = data["settings"]
            retry = s["retry"]
            key_field = data.get("api_key")
            upstreams_field = data.get("upstreams")
            upstreams = self._open_upstreams(upstreams_field)
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
                upstreams=upstreams,
                clear_upstreams=upstreams_field == CLEARED,
            )
            # Checked as a Configure would be, under this process's egress policy: the key this
            # process started with follows no endpoint of another origin.
            initial = self._initial
            base = Settings(api_key=initial.api_key, endpoint=initial.endpoint, upstreams=initial.upstreams)
            checked = apply(base, update, self._policy)
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
            upstreams=checked.upstreams,
        )
        return settings, doc.generation, key_field, upstreams_field

    def _open_key(self, field: object, purpose: str = API_KEY_PURPOSE) -> str | None:
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
        return self._sealer.open(str(field["sealed"]), purpose)

    def _seal(self, key: str, purpose: str = API_KEY_PURPOSE) -> dict[str, str]:
        if self._sealer is not None:
            return {"sealed": self._sealer.seal(key, purpose)}
        return {"plain": key}  # a single-process store only (refused above for a shared one)

    def _seal_upstream(self, upstream: UpstreamSpec) -> dict[str, str]:
        return self._seal(upstream.api_key, UPSTREAM_KEY_PURPOSE.format(name=upstream.name))

    def _open_upstreams(self, field: object) -> UpstreamSet | None:
        """The upstream set of a record, keys opened; None when the record holds none."""
        if field is None or field == CLEARED:
            return None
        if not isinstance(field, dict) or not isinstance(field.get("upstream"), list):
            raise TypeError("upstreams must be an object with an upstream list")
        tables = []
        for table in field["upstream"]:
            if not isinstance(table, dict):
                raise TypeError("each upstream must be an object")
            purpose = UPSTREAM_KEY_PURPOSE.format(name=table.get("name"))
            tables.append({**table, "api_key": self._open_key(table.get("api_key"), purpose)})
        upstreams = parse_configured({**field, "upstream": tables}, label="upstream")
        if upstreams.source != SOURCE_CONFIGURE:  # pragma: no cover - parse_configured sets it
            raise ValueError("a stored upstream set comes from Configure")
        return upstreams

    async def _save_state(self, settings: Settings) -> None:
        assert self._state is not None
        try:
            await asyncio.to_thread(self._state.save, settings)
        except OSError as exc:
            log.error("could not write the state file: %s", exc.strerror)
            raise GatewayError(Reason.INTERNAL_ERROR, "could not persist the settings; nothing was changed") from None


def _encode(s: Settings, key: dict[str, str] | None, upstreams: dict[str, Any] | None) -> bytes:
    return json.dumps(
        {"version": DOC_VERSION, "settings": plain_fields(s), "api_key": key, "upstreams": upstreams}
    ).encode()
