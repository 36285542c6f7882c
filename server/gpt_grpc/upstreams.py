"""The upstream set: several upstreams with priorities, weights, models, breakers and fallback models.

One shape, three ways in, one validation:

- the upstreams file (`--upstreams FILE` / `GPT_GRPC_UPSTREAMS`, TOML), whose
  keys come from the environment (`api_key_env`) or a file (`api_key_file`);
- Configure (`ConfigureRequest.upstreams`), whose keys are given inline, or
  kept from the upstream of the same name when its origin does not move;
- the shared store's settings record (keys sealed), read back by every replica.

Each is turned into the same mapping (`[[upstream]]` tables, `[fallbacks]`,
optional `[breaker]` defaults) and checked by `parse` as a whole: every bad
key is named at once (`upstream[1].weight: ...`), nothing is half-applied.
What depends on the operator's egress policy and on the set in force (a key
that would follow a moved URL) is checked by `UpstreamSet.checked`, called
from `settings.apply` with the rest of a Configure.

`OPENAI_BASE_URL` + `OPENAI_API_KEY` remain the one-upstream shorthand:
`Settings.upstreams` is None then.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from .egress import EgressPolicy, endpoint_problem, origin, resolved_problem
from .errors import FieldViolation, invalid
from .settings import KEY_MUST_FOLLOW, check_api_key, check_endpoint, mask_key

KINDS = ("openai", "azure")
# Names are shown in responses, logs, metric labels and error metadata: short and tame.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")
MAX_UPSTREAMS = 32
MAX_MODELS_PER_UPSTREAM = 256
MAX_MODEL_PATTERN_CHARS = 256
MAX_FALLBACK_MODELS = 8  # per model
MAX_FALLBACK_ENTRIES = 256
MAX_PRIORITY = 1000
MAX_WEIGHT = 1000.0
# Azure's api-version is a date, optionally with "-preview".
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
_DEPLOYMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")
DEFAULT_AZURE_API_VERSION = "2024-10-21"

SOURCE_FILE = "file"
SOURCE_CONFIGURE = "configure"

_UPSTREAM_KEYS = frozenset(
    {
        "name",
        "kind",
        "base_url",
        "api_key",
        "api_key_env",
        "api_key_file",
        "priority",
        "weight",
        "models",
        "api_version",
        "deployments",
        "organization",
        "project",
        "breaker",
    }
)
_TOP_KEYS = frozenset({"upstream", "fallbacks", "breaker"})


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When an upstream's circuit opens and how it closes again (upstream/breaker.py)."""

    failure_threshold: int = 5  # consecutive failures that open it
    failure_ratio: float = 0.5  # or this share of failed attempts ...
    window: float = 30.0  # ... over this many seconds ...
    min_calls: int = 20  # ... once the window holds at least this many attempts
    probe_interval: float = 10.0  # seconds between half-open probes while open
    close_after: int = 2  # successful probes in a row that close it
    quota_cooldown: float = 300.0  # seconds out after 429 insufficient_quota
    auth_cooldown: float = 60.0  # seconds out after 401 (its key was refused)


# name -> (type check and bound, message); numbers in seconds where they are durations.
_BREAKER_RULES: Mapping[str, tuple[Callable[[Any], bool], str]] = {
    "failure_threshold": (lambda v: _is_int(v) and 1 <= v <= 1000, "must be an integer from 1 to 1000"),
    "failure_ratio": (lambda v: _is_number(v) and 0 < v <= 1, "must be a number above 0, at most 1"),
    "window": (lambda v: _is_number(v) and 0 < v <= 3600, "must be seconds above 0, at most 3600"),
    "min_calls": (lambda v: _is_int(v) and 1 <= v <= 100_000, "must be an integer from 1 to 100000"),
    "probe_interval": (lambda v: _is_number(v) and 0 < v <= 3600, "must be seconds above 0, at most 3600"),
    "close_after": (lambda v: _is_int(v) and 1 <= v <= 100, "must be an integer from 1 to 100"),
    "quota_cooldown": (lambda v: _is_number(v) and 0 < v <= 86400, "must be seconds above 0, at most 86400"),
    "auth_cooldown": (lambda v: _is_number(v) and 0 < v <= 86400, "must be seconds above 0, at most 86400"),
}


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """One upstream as configured (validated)."""

    name: str
    base_url: str
    api_key: str = field(repr=False)
    kind: str = "openai"
    priority: int = 1
    weight: float = 1.0
    models: tuple[str, ...] = ()  # exact names or globs; empty: every model (azure: its deployments)
    api_version: str | None = None
    deployments: tuple[tuple[str, str], ...] = ()  # azure: (model, deployment)
    organization: str | None = None
    project: str | None = None
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)

    def serves(self, model: str) -> bool:
        """Whether this upstream takes calls for `model`."""
        if self.kind == "azure":
            return any(m == model for m, _ in self.deployments)
        return not self.models or any(m == model or fnmatchcase(model, m) for m in self.models)

    def deployment(self, model: str) -> str | None:
        return next((d for m, d in self.deployments if m == model), None)

    def listed_models(self) -> tuple[str, ...]:
        """The models as shown to operators ("*" for every model)."""
        if self.kind == "azure":
            return tuple(m for m, _ in self.deployments)
        return self.models or ("*",)

    def to_mapping(self, key: object) -> dict[str, Any]:
        """The spec in the file's shape, with `key` as its api_key (sealed, masked, or None)."""
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "base_url": self.base_url,
            "priority": self.priority,
            "weight": self.weight,
            "breaker": dataclasses.asdict(self.breaker),
        }
        if key is not None:
            out["api_key"] = key
        if self.models:
            out["models"] = list(self.models)
        if self.kind == "azure":
            out["api_version"] = self.api_version
            out["deployments"] = dict(self.deployments)
        if self.organization:
            out["organization"] = self.organization
        if self.project:
            out["project"] = self.project
        return out


@dataclass(frozen=True, slots=True)
class UpstreamSet:
    """Every upstream and the fallback models; replaced whole (file at start, or Configure)."""

    upstreams: tuple[UpstreamSpec, ...]
    fallbacks: tuple[tuple[str, tuple[str, ...]], ...] = ()
    source: str = SOURCE_FILE  # where it came from: "file" (each process reads it) or "configure" (stored)

    def __repr__(self) -> str:  # never the keys
        names = ", ".join(f"{u.name}={u.base_url} key={mask_key(u.api_key)}" for u in self.upstreams)
        return f"UpstreamSet({names}; fallbacks={dict(self.fallbacks)!r}, source={self.source})"

    def fallbacks_of(self, model: str) -> tuple[str, ...]:
        return next((f for m, f in self.fallbacks if m == model), ())

    def by_name(self, name: str) -> UpstreamSpec | None:
        return next((u for u in self.upstreams if u.name == name), None)

    def checked(
        self, policy: EgressPolicy | None, current: UpstreamSet | None, prefix: str = "upstreams.upstreams"
    ) -> tuple[UpstreamSet, list[FieldViolation]]:
        """This set under the operator's `policy`, keys filled in from `current`; (set, violations).

        An upstream given without a key (Configure) keeps the key of the upstream
        of the same name in force, unless its URL moved to another origin: a key
        never follows a URL to another host.
        """
        violations: list[FieldViolation] = []
        out: list[UpstreamSpec] = []
        for i, spec in enumerate(self.upstreams):
            where = f"{prefix}[{i}]"
            if policy is not None:
                problem = endpoint_problem(spec.base_url, policy)
                if problem:
                    violations.append(FieldViolation(f"{where}.base_url", problem))
            if not spec.api_key:
                old = current.by_name(spec.name) if current is not None else None
                if old is None:
                    violations.append(FieldViolation(f"{where}.api_key", "must be given for a new upstream"))
                elif origin(old.base_url) != origin(spec.base_url):
                    violations.append(FieldViolation(f"{where}.api_key", KEY_MUST_FOLLOW))
                else:
                    spec = dataclasses.replace(spec, api_key=old.api_key)
                    problem = check_api_key(spec.api_key, spec.base_url)
                    if problem:
                        violations.append(FieldViolation(f"{where}.api_key", problem))
            out.append(spec)
        return dataclasses.replace(self, upstreams=tuple(out)), violations

    def to_mapping(self, key_of: Callable[[UpstreamSpec], object]) -> dict[str, Any]:
        """The set in the file's shape; `key_of` says what each upstream's api_key becomes."""
        return {
            "upstream": [u.to_mapping(key_of(u)) for u in self.upstreams],
            "fallbacks": {m: list(f) for m, f in self.fallbacks},
        }


class UpstreamsFileError(Exception):
    """The upstreams file cannot be used; the message names the bad key."""


KeyResolver = Callable[[Mapping[str, Any], str, list[FieldViolation]], str]


def load_file(path: str, env: Mapping[str, str] | None = None) -> UpstreamSet:
    """The upstream set of a TOML file, keys read from the environment or files; raises UpstreamsFileError."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise UpstreamsFileError(f"cannot read the upstreams file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UpstreamsFileError(f"the upstreams file {path} is not valid TOML: {exc}") from None
    environ = os.environ if env is None else env
    try:
        return parse(data, file_keys(environ), prefix="", source=SOURCE_FILE)
    except _Invalid as exc:
        listed = "; ".join(f"{v.field}: {v.description}" for v in exc.violations)
        raise UpstreamsFileError(f"the upstreams file {path} is invalid: {listed}") from None


def file_keys(env: Mapping[str, str]) -> KeyResolver:
    """Keys as a file gives them: `api_key_env` (a variable's name) or `api_key_file` (a path); never inline."""

    def resolve(table: Mapping[str, Any], where: str, out: list[FieldViolation]) -> str:
        if "api_key" in table:
            out.append(
                FieldViolation(f"{where}.api_key", "keys are not written in the file: use api_key_env or api_key_file")
            )
            return ""
        by_env, by_file = table.get("api_key_env"), table.get("api_key_file")
        if (by_env is None) == (by_file is None):
            out.append(FieldViolation(where, "give exactly one of api_key_env and api_key_file"))
            return ""
        if by_env is not None:
            if not isinstance(by_env, str) or not by_env:
                out.append(FieldViolation(f"{where}.api_key_env", "must be an environment variable's name"))
                return ""
            key = env.get(by_env, "").strip()
            if not key:
                out.append(FieldViolation(f"{where}.api_key_env", f"the environment variable {by_env} is not set"))
            return key
        if not isinstance(by_file, str) or not by_file:
            out.append(FieldViolation(f"{where}.api_key_file", "must be a path"))
            return ""
        try:
            with open(by_file, encoding="utf-8") as f:
                key = f.read().strip()
        except OSError as exc:
            out.append(FieldViolation(f"{where}.api_key_file", f"cannot read {by_file}: {exc.strerror}"))
            return ""
        if not key:
            out.append(FieldViolation(f"{where}.api_key_file", f"{by_file} is empty"))
        return key

    return resolve


def inline_keys(table: Mapping[str, Any], where: str, out: list[FieldViolation]) -> str:
    """Keys as Configure and the store give them: inline `api_key`, or none (kept from the set in force)."""
    for key_from in ("api_key_env", "api_key_file"):
        if key_from in table:
            out.append(FieldViolation(f"{where}.{key_from}", "only the upstreams file reads keys from the server"))
    key = table.get("api_key")
    if key is None:
        return ""
    if not isinstance(key, str):
        out.append(FieldViolation(f"{where}.api_key", "must be a string"))
        return ""
    return key


class _Invalid(Exception):
    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("invalid upstream set")
        self.violations = violations


def parse_configured(data: Mapping[str, Any], prefix: str = "upstreams", label: str = "upstreams") -> UpstreamSet:
    """A set given by Configure (or read back from the store); raises GatewayError(INVALID_REQUEST).

    `label` names the list of upstreams in violations (the proto's field is `upstreams`).
    """
    try:
        return parse(data, inline_keys, prefix=prefix, source=SOURCE_CONFIGURE, label=label)
    except _Invalid as exc:
        raise invalid(exc.violations) from None


def parse(
    data: Mapping[str, Any], keys: KeyResolver, *, prefix: str, source: str, label: str = "upstream"
) -> UpstreamSet:
    """Check a set in the file's shape as a whole; raises _Invalid listing every problem."""
    out: list[FieldViolation] = []
    dot = f"{prefix}." if prefix else ""
    for unknown in sorted(set(data) - _TOP_KEYS):
        out.append(FieldViolation(f"{dot}{unknown}", "unknown key (expected upstream, fallbacks, breaker)"))
    defaults = _breaker(data.get("breaker", {}), f"{dot}breaker", BreakerPolicy(), out)
    tables = data.get("upstream")
    specs: list[UpstreamSpec] = []
    if not isinstance(tables, list) or not tables:
        out.append(FieldViolation(f"{dot}{label}", "must list at least one [[upstream]]"))
        tables = []
    elif len(tables) > MAX_UPSTREAMS:
        out.append(FieldViolation(f"{dot}{label}", f"at most {MAX_UPSTREAMS} upstreams"))
        tables = []
    names: set[str] = set()
    for i, table in enumerate(tables):
        where = f"{dot}{label}[{i}]"
        if not isinstance(table, Mapping):
            out.append(FieldViolation(where, "must be a table"))
            continue
        name = table.get("name")
        if isinstance(name, str) and name in names:
            out.append(FieldViolation(f"{where}.name", f"{name!r} is used by another upstream"))
        names.add(str(name))
        spec = _upstream(table, where, keys, defaults, out)
        if spec is not None:
            specs.append(spec)
    fallbacks = _fallbacks(data.get("fallbacks", {}), f"{dot}fallbacks", out)
    if out:
        raise _Invalid(out)
    return UpstreamSet(tuple(specs), fallbacks, source)


def _upstream(
    table: Mapping[str, Any],
    where: str,
    keys: KeyResolver,
    defaults: BreakerPolicy,
    out: list[FieldViolation],
) -> UpstreamSpec | None:
    before = len(out)
    for unknown in sorted(set(table) - _UPSTREAM_KEYS):
        out.append(FieldViolation(f"{where}.{unknown}", "unknown key"))
    name = table.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        out.append(
            FieldViolation(f"{where}.name", "must be 1-64 letters, digits, '.', '_' or '-', starting alphanumeric")
        )
    kind = table.get("kind", "openai")
    if kind not in KINDS:
        out.append(FieldViolation(f"{where}.kind", f"must be one of {', '.join(KINDS)}"))
    base_url = table.get("base_url")
    if not isinstance(base_url, str):
        out.append(FieldViolation(f"{where}.base_url", "must be a URL"))
        base_url = ""
    else:
        problem = check_endpoint(base_url)
        if problem:
            out.append(FieldViolation(f"{where}.base_url", problem))
        base_url = base_url.rstrip("/")
    key = keys(table, where, out)
    if key and base_url and not check_endpoint(base_url):
        problem = check_api_key(key, base_url)
        if problem:
            out.append(FieldViolation(f"{where}.api_key", problem))
    priority = table.get("priority", 1)
    if not _is_int(priority) or not 0 <= priority <= MAX_PRIORITY:
        out.append(FieldViolation(f"{where}.priority", f"must be an integer from 0 to {MAX_PRIORITY} (lower first)"))
    weight = table.get("weight", 1)
    if not _is_number(weight) or not 0 < weight <= MAX_WEIGHT:
        out.append(FieldViolation(f"{where}.weight", f"must be a number above 0, at most {MAX_WEIGHT:g}"))
    models = _strings(table.get("models", []), f"{where}.models", MAX_MODELS_PER_UPSTREAM, out)
    deployments: tuple[tuple[str, str], ...] = ()
    api_version = table.get("api_version")
    if kind == "azure":
        deployments = _deployments(table.get("deployments"), f"{where}.deployments", out)
        if "models" in table:
            out.append(FieldViolation(f"{where}.models", "an azure upstream serves the models of its deployments"))
        if api_version is None:
            api_version = DEFAULT_AZURE_API_VERSION
        elif not isinstance(api_version, str) or not _API_VERSION.fullmatch(api_version):
            out.append(FieldViolation(f"{where}.api_version", "must be a date like 2024-10-21 (optionally -preview)"))
    else:
        for azure_only in ("deployments", "api_version"):
            if azure_only in table:
                out.append(FieldViolation(f"{where}.{azure_only}", 'only for kind = "azure"'))
    organization = _optional_id(table.get("organization"), f"{where}.organization", out)
    project = _optional_id(table.get("project"), f"{where}.project", out)
    breaker = _breaker(table.get("breaker", {}), f"{where}.breaker", defaults, out)
    if len(out) > before:
        return None
    return UpstreamSpec(
        name=str(name),
        base_url=base_url,
        api_key=key,
        kind=str(kind),
        priority=int(priority),
        weight=float(weight),
        models=models,
        api_version=str(api_version) if kind == "azure" else None,
        deployments=deployments,
        organization=organization,
        project=project,
        breaker=breaker,
    )


def _breaker(value: object, where: str, defaults: BreakerPolicy, out: list[FieldViolation]) -> BreakerPolicy:
    if not isinstance(value, Mapping):
        out.append(FieldViolation(where, "must be a table"))
        return defaults
    changes: dict[str, Any] = {}
    for key, item in value.items():
        rule = _BREAKER_RULES.get(key)
        if rule is None:
            out.append(FieldViolation(f"{where}.{key}", f"unknown key (expected one of {', '.join(_BREAKER_RULES)})"))
        elif not rule[0](item):
            out.append(FieldViolation(f"{where}.{key}", rule[1]))
        else:
            changes[key] = item
    return dataclasses.replace(defaults, **changes) if changes else defaults


def _deployments(value: object, where: str, out: list[FieldViolation]) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping) or not value:
        out.append(FieldViolation(where, "an azure upstream needs its model -> deployment map"))
        return ()
    if len(value) > MAX_MODELS_PER_UPSTREAM:
        out.append(FieldViolation(where, f"at most {MAX_MODELS_PER_UPSTREAM} deployments"))
        return ()
    pairs = []
    for model, deployment in value.items():
        if not isinstance(model, str) or not model or len(model) > MAX_MODEL_PATTERN_CHARS:
            out.append(FieldViolation(where, f"model names must be 1-{MAX_MODEL_PATTERN_CHARS} characters"))
        elif not isinstance(deployment, str) or not _DEPLOYMENT.fullmatch(deployment):
            out.append(FieldViolation(f"{where}.{model}", "must be a deployment name (letters, digits, '.', '_', '-')"))
        else:
            pairs.append((model, deployment))
    return tuple(pairs)


def _fallbacks(value: object, where: str, out: list[FieldViolation]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, Mapping):
        out.append(FieldViolation(where, "must be a table of model = [fallback models]"))
        return ()
    if len(value) > MAX_FALLBACK_ENTRIES:
        out.append(FieldViolation(where, f"at most {MAX_FALLBACK_ENTRIES} models"))
        return ()
    pairs = []
    for model, listed in value.items():
        if not isinstance(model, str) or not model or len(model) > MAX_MODEL_PATTERN_CHARS:
            out.append(FieldViolation(where, f"model names must be 1-{MAX_MODEL_PATTERN_CHARS} characters"))
            continue
        models = _strings(listed, f"{where}.{model}", MAX_FALLBACK_MODELS, out)
        if model in models:
            out.append(FieldViolation(f"{where}.{model}", "a model is not its own fallback"))
        elif models:
            pairs.append((model, models))
    return tuple(pairs)


def _strings(value: object, where: str, limit: int, out: list[FieldViolation]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, str) and 0 < len(v) <= MAX_MODEL_PATTERN_CHARS for v in value
    ):
        out.append(FieldViolation(where, f"must be a list of model names of 1-{MAX_MODEL_PATTERN_CHARS} characters"))
        return ()
    if len(value) > limit:
        out.append(FieldViolation(where, f"at most {limit} entries"))
        return ()
    return tuple(dict.fromkeys(value))


def _optional_id(value: object, where: str, out: list[FieldViolation]) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 256 or not value.isascii() or not value.isprintable() or " " in value:
        out.append(FieldViolation(where, "must be printable ASCII without spaces, at most 256 characters"))
        return None
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


async def resolved_problems(upstreams: UpstreamSet, prefix: str) -> list[FieldViolation]:
    """What each upstream's host name resolves to now, under the egress rules (egress.resolved_problem)."""
    out = []
    for i, upstream in enumerate(upstreams.upstreams):
        problem = await resolved_problem(upstream.base_url)
        if problem:
            out.append(FieldViolation(f"{prefix}[{i}].base_url", problem))
    return out


def summary(upstreams: Iterable[UpstreamSpec]) -> str:
    """One line naming the upstreams (for the start-up log)."""
    return ", ".join(f"{u.name} ({u.kind}, priority {u.priority}, weight {u.weight:g})" for u in upstreams)
