"""Server start-up, health, reflection, tracing and graceful shutdown.

Settings come from flags, then the environment, then defaults. `Configure`
changes the upstream settings at run time. Tracing is configured by the
standard OpenTelemetry variables alone (`tracing_from_env`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import logging
import math
import os
import resource
import signal
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, overload

import grpc
from gptgrpc.v1 import gateway_pb2 as pb
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .. import tokens
from ..accounts import Accounts
from ..assistant import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_MESSAGES, Caps, ContextAssistant
from ..egress import EgressPolicy, resolved_problem
from ..engine import Engine
from ..errors import FieldViolation, GatewayError, invalid
from ..limits import DEFAULT_RESERVED_COMPLETION_TOKENS, FallbackPrice, Pricer
from ..models import Models
from ..pricing import Pricing
from ..retry import RetryBudget
from ..settings import Settings, SettingsUpdate, apply
from ..settings_sync import SettingsRecordError, SettingsSync
from ..state import StateFile, StateFileError
from ..store import StoreError, store_from_url
from ..store.secrets import Sealer, SecretKeyError, sealer_from_env
from ..upstream.routing import Routers
from ..upstreams import UpstreamsFileError, load_file, resolved_problems, summary
from ..usage import DiscardResults
from . import logs, reflection, registration, workers
from .admission import Admission
from .auth import AdminAuth, Authorizer
from .metrics import Metrics
from .servicer import GPTServicer, add_to_server

if TYPE_CHECKING:
    from .tracing import Tracing

log = logging.getLogger("gpt_grpc.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GPTService"].full_name
_HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
DEFAULT_PORT = 50051
# Big enough for a large conversation, small enough to bound memory per call.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# A connection without calls for this long is closed (GOAWAY); the client reconnects
# on its next call. gRPC's default keeps it forever.
DEFAULT_MAX_CONNECTION_IDLE = 300.0
# Every connection is replaced after about this long (gRPC adds +-10% jitter), so that
# no client holds one forever and new connections spread over the workers.
DEFAULT_MAX_CONNECTION_AGE = 3600.0
# Calls in flight on a connection past its age get this long to finish: longer than
# a long streamed answer.
DEFAULT_MAX_CONNECTION_AGE_GRACE = 600.0
_MAX_GRPC_MS = 2**31 - 1  # gRPC's integer options are C ints
# The admin token decides where prompts and the key go: a short one can be guessed.
MIN_ADMIN_TOKEN_CHARS = 32
# Tracing is on when one of these (the standard OpenTelemetry variables) names an OTLP endpoint.
OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    admin_token: str | None = field(default=None, repr=False)
    reflection: bool = True
    grace_period: float = 30.0
    max_in_flight: int = 10_000
    pricing_file: str | None = None
    upstream: SettingsUpdate = field(default_factory=SettingsUpdate)
    # Several upstreams (--upstreams FILE, TOML; upstreams.py): the whole set, the shorthand ignored.
    upstreams_file: str | None = None
    retry_budget: bool = True
    state_file: str | None = None
    # Where clients, limits, usage and settings live (store/__init__.py): None = in memory.
    # db_path (--db) is a synonym of store_url="sqlite:///<path>".
    store_url: str | None = None
    db_path: str | None = None
    store_password: str | None = field(default=None, repr=False)
    # The operator's secret for keys kept in the store (store/secrets.py).
    secret_key: str | None = field(default=None, repr=False)
    # Price of models without one, for budgeted clients (None: such calls are refused).
    unpriced_model_price: FallbackPrice | None = None
    reserved_completion_tokens: int = DEFAULT_RESERVED_COMPLETION_TOKENS
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # Server processes sharing the port (see workers.py); a worker binds with SO_REUSEPORT.
    workers: int = 1
    reuse_port: bool = False
    loop: str = "auto"
    # Where prompts and the key may go (egress.py): plain http off loopback, and an allowlist.
    allow_insecure_upstream: bool = False
    allowed_upstream_hosts: str | None = None  # comma-separated; None or empty: any host
    # HTTP/2 connection lifetimes, in seconds; 0 turns one off (see _connection_options).
    max_connection_idle: float = DEFAULT_MAX_CONNECTION_IDLE
    max_connection_age: float = DEFAULT_MAX_CONNECTION_AGE
    max_connection_age_grace: float = DEFAULT_MAX_CONNECTION_AGE_GRACE
    # What one conversation of the context assistant may hold (assistant.py).
    conversation_max_messages: int = DEFAULT_MAX_MESSAGES
    conversation_max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES


class GatewayServer:
    """One grpc.aio server with GPTService, health and reflection."""

    def __init__(self, config: ServerConfig, engine: Engine | None = None) -> None:
        self.config = config
        _check_admin_token(config.admin_token)
        connection_options = _connection_options(config)
        # Validate the start-up settings like a Configure call would, under the same
        # egress policy; settings saved by Configure before a restart win over the
        # environment. (What the endpoint's name resolves to is checked in start.)
        self.egress = EgressPolicy.of(config.allow_insecure_upstream, config.allowed_upstream_hosts)
        settings = apply(Settings(), _with_upstreams_file(config, self.egress), self.egress)
        self.store = store_from_url(store_url(config), password=config.store_password)
        if config.state_file and self.store.shared:
            raise ConfigError(
                "--state-file is for a single process: with a shared store the settings live in the store"
            )
        self.state = StateFile(config.state_file) if config.state_file else None
        saved = self.state.load() if self.state else None
        if saved is not None:
            settings = _revalidate(saved, self.egress, settings)
            log.info("restored settings from %s (generation %d)", config.state_file, settings.generation)
        self.metrics = Metrics()
        self.tracing = tracing_from_env(os.environ)
        self.engine = engine or Engine(
            settings,
            models=Models(pricing=Pricing(config.pricing_file)),
            budget=RetryBudget() if config.retry_budget else None,
            observer=self.metrics,
            router=Routers(observer=self.metrics),
            sink=DiscardResults(),
        )
        if self.tracing is not None and self.engine.tracer is None:
            self.engine.tracer = self.tracing.attempts
        self.accounts = Accounts(self.store)
        sealer = Sealer(config.secret_key) if config.secret_key else None
        self.settings_sync = SettingsSync(
            self.store, settings, self.engine.install, sealer=sealer, state=self.state, policy=self.egress
        )
        self.pricer = Pricer(config.unpriced_model_price, config.reserved_completion_tokens)
        if config.conversation_max_messages < 2 or config.conversation_max_message_bytes < 1:
            raise ConfigError("--conversation-max-messages must be at least 2, --conversation-max-message-bytes 1")
        self.assistant = ContextAssistant(
            self.store,
            self.engine.models,
            self.engine.model_name,
            caps=Caps(config.conversation_max_messages, config.conversation_max_message_bytes),
        )
        self.credentials = _server_credentials(config)
        self.admission = Admission(config.max_in_flight)
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 1 if config.reuse_port else 0),
                # Calls the transport accepted that the application has not picked
                # up yet. gRPC's defaults (1,000, hard 3,000) cancel calls of a
                # burst of thousands within a second, before admission sees them;
                # admission (max_in_flight) is the limit that answers OVERLOADED.
                ("grpc.server.max_pending_requests", max(1_000, config.max_in_flight)),
                ("grpc.server.max_pending_requests_hard_limit", max(3_000, 2 * config.max_in_flight)),
                *connection_options,
            ]
        )
        self.servicer = GPTServicer(
            self.engine,
            Authorizer(AdminAuth(config.admin_token), self.accounts),
            self.admission,
            accounts=self.accounts,
            metrics=self.metrics,
            settings_sync=self.settings_sync,
            pricer=self.pricer,
            assistant=self.assistant,
            egress=self.egress,
            tracing=self.tracing,
        )
        # Undecodable requests: INVALID_ARGUMENT, not UNKNOWN with a traceback (registration.py).
        add_to_server(self.servicer, self.server)
        health_handlers = registration.generated_handlers(health_pb2_grpc.add_HealthServicer_to_server, self.health)
        health_types = {m.name: m.input_type.full_name for m in _HEALTH.methods}
        registration.register(
            self.server,
            _HEALTH.full_name,
            registration.guarded(_HEALTH.full_name, registration.lenient(health_handlers, health_types)),
        )
        if config.reflection:
            reflection.enable(self.server, (SERVICE_NAME, health.SERVICE_NAME))
        self.port = 0
        self.metrics_port: int | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        await _check_resolved(self.engine.settings)
        tokens.preload()  # readiness includes the encodings: no first-call stall
        self.store.on_degraded(self.metrics.store_degraded.set)
        await self.store.open()
        try:
            settings = await self.settings_sync.start()
        except SettingsRecordError as exc:
            await self.store.close()
            raise ConfigError(str(exc)) from None
        if settings.generation and self.store.shared:
            log.info("settings from the store %s (generation %d)", self.store.description, settings.generation)
        address = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        if self.credentials is not None:
            self.port = self.server.add_secure_port(f"{address}:{self.config.port}", self.credentials)
        else:
            self.port = self.server.add_insecure_port(f"{address}:{self.config.port}")
            if not _is_loopback(self.config.host):
                log.warning("listening on %s without TLS: traffic is plain text", self.config.host)
        await self.server.start()
        self.metrics.watch(
            asyncio.get_running_loop(), self.engine.budget, self.store, in_flight=lambda: self.admission.in_flight
        )
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve(self.config.metrics_port, self.config.metrics_host)
            log.info("metrics on http://%s:%d/metrics", self.config.metrics_host, self.metrics_port)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gpt-grpc listening on %s:%d", self.config.host, self.port)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING at once, refuse new calls, let those in flight finish."""
        grace = self.config.grace_period if grace is None else grace
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        drained = await self.admission.drain(grace)
        if not drained:
            log.warning("grace period over with %d calls in flight; cancelling them", self.admission.in_flight)
        await self.server.stop(0 if drained else 0.5)
        await self.engine.aclose()
        await self.store.close()
        if self.tracing is not None:  # the spans still buffered go out now
            await asyncio.to_thread(self.tracing.shutdown)
        self._stopped.set()

    async def wait(self) -> None:
        await self._stopped.wait()


def tracing_from_env(env: Mapping[str, str]) -> Tracing | None:
    """OpenTelemetry tracing when an OTLP endpoint variable is set (and OTEL_SDK_DISABLED is not true).

    Otherwise None, and nothing of OpenTelemetry is even imported: the SDK and
    the exporter load here, only when tracing is on.
    """
    if not any(env.get(name) for name in OTLP_ENDPOINT_VARIABLES):
        return None
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    from .tracing import Tracing, TracingConfigError

    try:
        tracing = Tracing.from_env(env, SERVICE_NAME)
    except TracingConfigError as exc:
        raise ConfigError(str(exc)) from None
    log.info("tracing on: spans exported over OTLP (%s)", ", ".join(n for n in OTLP_ENDPOINT_VARIABLES if env.get(n)))
    return tracing


def _connection_options(config: ServerConfig) -> list[tuple[str, int]]:
    """gRPC's connection lifetimes from the config's seconds; 0 leaves gRPC's default (no limit)."""
    out = []
    for option, flag, seconds in (
        ("grpc.max_connection_idle_ms", "--max-connection-idle", config.max_connection_idle),
        ("grpc.max_connection_age_ms", "--max-connection-age", config.max_connection_age),
        ("grpc.max_connection_age_grace_ms", "--max-connection-age-grace", config.max_connection_age_grace),
    ):
        if not math.isfinite(seconds) or seconds < 0 or seconds * 1000 > _MAX_GRPC_MS:
            raise ConfigError(f"{flag} must be 0 (no limit) or a number of seconds up to {_MAX_GRPC_MS // 1000}")
        if seconds > 0:
            out.append((option, max(1, round(seconds * 1000))))
    return out


def _with_upstreams_file(config: ServerConfig, policy: EgressPolicy) -> SettingsUpdate:
    """The start-up settings, with the upstreams file's set when one is given (it is then the whole set)."""
    if not config.upstreams_file:
        return config.upstream
    try:
        upstreams = load_file(config.upstreams_file)
    except UpstreamsFileError as exc:
        raise ConfigError(str(exc)) from None
    _, problems = upstreams.checked(policy, None, prefix="upstream")
    if problems:
        listed = "; ".join(f"{v.field}: {v.description}" for v in problems)
        raise ConfigError(f"the upstreams file {config.upstreams_file} is invalid: {listed}")
    if config.upstream.endpoint is not None:
        log.warning(
            "upstreams from %s; OPENAI_BASE_URL (--endpoint) is ignored: the file is the whole upstream set",
            config.upstreams_file,
        )
    log.info("upstreams from %s: %s", config.upstreams_file, summary(upstreams.upstreams))
    return dataclasses.replace(config.upstream, upstreams=upstreams)


async def _check_resolved(settings: Settings) -> None:
    """What each upstream's host name resolves to now, under the egress rules (egress.resolved_problem)."""
    if settings.upstreams is None:
        problem = await resolved_problem(settings.endpoint)
        if problem:
            raise invalid([FieldViolation("endpoint", problem)])
        return
    violations = await resolved_problems(settings.upstreams, "upstream")
    if violations:
        raise invalid(violations)


def _revalidate(saved: Settings, policy: EgressPolicy, started: Settings) -> Settings:
    """Check a saved snapshot as strictly as a Configure call (the file may have been edited).

    An upstream set that Configure saved wins over the one the process was started
    with (`started`, from the upstreams file); without one, the started one stays.
    """
    update = SettingsUpdate(
        api_key=saved.api_key,
        endpoint=saved.endpoint,
        organization=saved.organization or "",
        project=saved.project or "",
        default_model=saved.default_model,
        request_timeout=saved.request_timeout,
        max_attempts=saved.retry.max_attempts,
        initial_backoff=saved.retry.initial_backoff,
        max_backoff=saved.retry.max_backoff,
        upstreams=saved.upstreams,
    )
    try:
        checked = apply(Settings(upstreams=started.upstreams), update, policy)
    except GatewayError as exc:
        raise StateFileError(f"state file holds invalid settings: {exc.message}") from None
    return dataclasses.replace(checked, generation=saved.generation)


def store_url(config: ServerConfig) -> str | None:
    """--store, or --db as a synonym of a SQLite store."""
    if config.store_url and config.db_path:
        raise ConfigError("give --store or --db, not both (--db PATH means --store sqlite:///PATH)")
    if config.db_path:
        return "sqlite://" + str(os.path.abspath(config.db_path))
    return config.store_url


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS from a certificate and key; mutual TLS when a client CA is given too."""
    if not config.tls_cert and not config.tls_key:
        if config.tls_client_ca:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (config.tls_cert and config.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    try:
        pair = (_read_bytes(config.tls_key), _read_bytes(config.tls_cert))
        ca = _read_bytes(config.tls_client_ca) if config.tls_client_ca else None
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file {exc.filename}: {exc.strerror}") from None
    _check_tls_files(config.tls_cert, config.tls_key, config.tls_client_ca)
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def _check_tls_files(cert: str, key: str, client_ca: str | None) -> None:
    """Load the files as OpenSSL will, so a bad pair is named at start.

    gRPC itself says only "Failed to bind to address" when the key does not
    belong to the certificate or a file is not PEM.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback: an encrypted key fails here instead of prompting on the terminal.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"the TLS certificate {cert} and key {key} do not match: use the certificate's own key"
            ) from None
        raise ConfigError(
            f"cannot use the TLS certificate {cert} with the key {key} ({exc.reason or exc}): "
            "both must be PEM, the key unencrypted"
        ) from None
    if client_ca:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            raise ConfigError(f"cannot use the client CA {client_ca} ({exc.reason or exc}): it must be PEM") from None


class ConfigError(Exception):
    """Start-up settings that cannot work."""


def _check_admin_token(token: str | None) -> None:
    """Refuse a guessable admin token at start, saying how to make a good one."""
    if token is not None and len(token) < MIN_ADMIN_TOKEN_CHARS:
        raise ConfigError(
            f"the admin token has {len(token)} characters; it must have at least {MIN_ADMIN_TOKEN_CHARS}. "
            "Make one with: openssl rand -base64 32"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@overload
def _env_float(name: str) -> float | None: ...
@overload
def _env_float(name: str, default: float) -> float: ...
def _env_float(name: str, default: float | None = None) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else default


def _read_secret_file(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def parse_args(argv: Sequence[str] | None = None) -> ServerConfig:
    env = os.environ
    p = argparse.ArgumentParser(prog="gpt-grpc-server", description="gRPC gateway to OpenAI-compatible chat models")
    p.add_argument("--host", default=env.get("GPT_GRPC_HOST", "127.0.0.1"), help="address to listen on")
    p.add_argument("--port", type=int, default=int(env.get("GPT_GRPC_PORT", DEFAULT_PORT)), help="0 picks a free one")
    p.add_argument(
        "--admin-token-file",
        default=env.get("GPT_GRPC_ADMIN_TOKEN_FILE"),
        help="file holding the admin bearer token (or set GPT_GRPC_ADMIN_TOKEN)",
    )
    p.add_argument("--endpoint", default=env.get("OPENAI_BASE_URL"), help="upstream base URL")
    p.add_argument(
        "--upstreams",
        default=env.get("GPT_GRPC_UPSTREAMS"),
        metavar="FILE",
        help="several upstreams (TOML: [[upstream]] tables, [fallbacks]); the whole set: --endpoint is then ignored",
    )
    p.add_argument(
        "--api-key-file",
        default=env.get("OPENAI_API_KEY_FILE"),
        help="file holding the key (or OPENAI_API_KEY)",
    )
    p.add_argument(
        "--allowed-upstream-hosts",
        default=env.get("GPT_GRPC_ALLOWED_UPSTREAM_HOSTS"),
        help="comma-separated hosts the upstream endpoint may name (default: any that is not refused)",
    )
    p.add_argument(
        "--allow-insecure-upstream",
        action="store_true",
        default=env.get("GPT_GRPC_ALLOW_INSECURE_UPSTREAM", "") in ("1", "true", "yes"),
        help="allow a plain http upstream off loopback (prompts and the key in clear text)",
    )
    p.add_argument("--default-model", default=env.get("GPT_GRPC_DEFAULT_MODEL"))
    p.add_argument("--request-timeout", type=float, default=_env_float("GPT_GRPC_REQUEST_TIMEOUT"))
    p.add_argument("--max-attempts", type=int, default=None)
    p.add_argument("--grace-period", type=float, default=_env_float("GPT_GRPC_GRACE_PERIOD") or 30.0)
    p.add_argument("--max-in-flight", type=int, default=int(env.get("GPT_GRPC_MAX_IN_FLIGHT", 10_000)))
    p.add_argument("--pricing-file", default=env.get("GPT_GRPC_PRICING_FILE"), help="price overrides (JSON)")
    p.add_argument(
        "--state-file",
        default=env.get("GPT_GRPC_STATE_FILE"),
        help="persist Configure changes here (0600) and restore them at start",
    )
    p.add_argument(
        "--store",
        default=env.get("GPT_GRPC_STORE"),
        help="where clients, limits, usage and settings live: sqlite:///path/gateway.db (one process), "
        "redis://host:6379/0 or rediss://... (a fleet); default: in memory",
    )
    p.add_argument("--db", default=env.get("GPT_GRPC_DB"), help="SQLite file for clients and their usage")
    p.add_argument(
        "--unpriced-model-price",
        default=env.get("GPT_GRPC_UNPRICED_MODEL_PRICE"),
        metavar="IN,OUT",
        help="USD per million input,output tokens for models without a price; without it, a client with a "
        "budget cannot call them",
    )
    p.add_argument(
        "--reserved-completion-tokens",
        type=int,
        default=int(env.get("GPT_GRPC_RESERVED_COMPLETION_TOKENS", DEFAULT_RESERVED_COMPLETION_TOKENS)),
        help="completion tokens a call without max_tokens reserves against its client's budget and token limit",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(env["GPT_GRPC_METRICS_PORT"]) if env.get("GPT_GRPC_METRICS_PORT") else None,
        help="serve Prometheus metrics on this port (off by default)",
    )
    p.add_argument("--metrics-host", default=env.get("GPT_GRPC_METRICS_HOST", "127.0.0.1"))
    p.add_argument("--tls-cert", default=env.get("GPT_GRPC_TLS_CERT"), help="server certificate chain (PEM)")
    p.add_argument("--tls-key", default=env.get("GPT_GRPC_TLS_KEY"), help="server private key (PEM)")
    p.add_argument(
        "--tls-client-ca", default=env.get("GPT_GRPC_TLS_CLIENT_CA"), help="CA for client certificates (mutual TLS)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(env.get("GPT_GRPC_WORKERS", 1)),
        help="server processes sharing the port (SO_REUSEPORT); about one per core",
    )
    p.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default=env.get("GPT_GRPC_LOOP", "auto"),
        help="event loop: uvloop when installed (auto), or asyncio's",
    )
    p.add_argument(
        "--max-connection-idle",
        type=float,
        default=_env_float("GPT_GRPC_MAX_CONNECTION_IDLE", DEFAULT_MAX_CONNECTION_IDLE),
        help="seconds a connection may stay without calls before the server closes it (0: never)",
    )
    p.add_argument(
        "--max-connection-age",
        type=float,
        default=_env_float("GPT_GRPC_MAX_CONNECTION_AGE", DEFAULT_MAX_CONNECTION_AGE),
        help="seconds after which a connection is replaced (0: never)",
    )
    p.add_argument(
        "--max-connection-age-grace",
        type=float,
        default=_env_float("GPT_GRPC_MAX_CONNECTION_AGE_GRACE", DEFAULT_MAX_CONNECTION_AGE_GRACE),
        help="seconds calls in flight on a replaced connection get to finish (0: no limit)",
    )
    p.add_argument(
        "--conversation-max-messages",
        type=int,
        default=int(env.get("GPT_GRPC_CONVERSATION_MAX_MESSAGES", DEFAULT_MAX_MESSAGES)),
        help="messages one conversation may hold (a turn past it: FAILED_PRECONDITION CONVERSATION_FULL)",
    )
    p.add_argument(
        "--conversation-max-message-bytes",
        type=int,
        default=int(env.get("GPT_GRPC_CONVERSATION_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES)),
        help="bytes (UTF-8) one message of a conversation may have, its system message included",
    )
    p.add_argument("--no-reflection", action="store_true", help="turn server reflection off")
    p.add_argument("--log-level", default=env.get("GPT_GRPC_LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    logs.configure(args.log_level)

    admin_token = env.get("GPT_GRPC_ADMIN_TOKEN") or None
    if args.admin_token_file:
        admin_token = _read_secret_file(args.admin_token_file)
    api_key = env.get("OPENAI_API_KEY") or None
    if args.api_key_file:
        api_key = _read_secret_file(args.api_key_file)
    store_password = env.get("GPT_GRPC_STORE_PASSWORD") or None
    if env.get("GPT_GRPC_STORE_PASSWORD_FILE"):
        store_password = _read_secret_file(env["GPT_GRPC_STORE_PASSWORD_FILE"])
    try:
        sealer_from_env(env)  # checked here: a short or unreadable secret stops the start
        fallback = FallbackPrice.parse(args.unpriced_model_price) if args.unpriced_model_price else None
    except (SecretKeyError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    secret_key = env.get("GPT_GRPC_SECRET_KEY") or None
    if env.get("GPT_GRPC_SECRET_KEY_FILE"):
        secret_key = _read_secret_file(env["GPT_GRPC_SECRET_KEY_FILE"])
    if args.reserved_completion_tokens < 1:
        raise ConfigError("--reserved-completion-tokens must be at least 1")
    upstream = SettingsUpdate(
        api_key=api_key,
        endpoint=args.endpoint or None,
        organization=env.get("OPENAI_ORG_ID") or None,
        project=env.get("OPENAI_PROJECT_ID") or None,
        default_model=args.default_model,
        request_timeout=args.request_timeout,
        max_attempts=args.max_attempts,
    )
    return ServerConfig(
        host=args.host,
        port=args.port,
        admin_token=admin_token,
        reflection=not args.no_reflection,
        grace_period=args.grace_period,
        max_in_flight=args.max_in_flight,
        pricing_file=args.pricing_file,
        upstream=upstream,
        upstreams_file=args.upstreams,
        state_file=args.state_file,
        store_url=args.store,
        db_path=args.db,
        store_password=store_password,
        secret_key=secret_key,
        unpriced_model_price=fallback,
        reserved_completion_tokens=args.reserved_completion_tokens,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        workers=args.workers,
        loop=args.loop,
        allow_insecure_upstream=args.allow_insecure_upstream,
        allowed_upstream_hosts=args.allowed_upstream_hosts,
        max_connection_idle=args.max_connection_idle,
        max_connection_age=args.max_connection_age,
        max_connection_age_grace=args.max_connection_age_grace,
        conversation_max_messages=args.conversation_max_messages,
        conversation_max_message_bytes=args.conversation_max_message_bytes,
    )


def _raise_open_file_limit() -> None:
    # Each call in flight holds an upstream connection: thousands of them.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(config: ServerConfig) -> None:
    server = GatewayServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    stopping: asyncio.Task[None] | None = None

    def on_signal() -> None:
        nonlocal stopping
        if stopping is None:
            log.info("shutting down: draining calls in flight (grace %.0fs)", config.grace_period)
            stopping = loop.create_task(server.stop())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    if os.environ.get("GPT_GRPC_DEBUG_TASKS") == "1":
        loop.add_signal_handler(signal.SIGUSR1, _log_debug_state, server)
    await server.wait()


def _log_debug_state(server: GatewayServer) -> None:
    """Hidden debug aid (GPT_GRPC_DEBUG_TASKS=1, then SIGUSR1): what a leak check needs.

    One log line: asyncio tasks alive, calls in flight, and the upstream HTTP
    pool's own summary (active/idle connections). Used by tests/faults.
    """
    pool = server.engine.client.pool_summary()
    log.warning(
        "debug-state tasks=%d in_flight=%d upstream_pool=%r",
        len(asyncio.all_tasks()),
        server.admission.in_flight,
        pool,
    )


def main(argv: Sequence[str] | None = None) -> None:
    try:
        config = parse_args(argv)
    except OSError as exc:
        print(f"gpt-grpc-server: cannot read a secret file: {exc.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    except ConfigError as exc:
        print(f"gpt-grpc-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    problem = workers.check(config)
    if problem is not None:
        print(f"gpt-grpc-server: {problem}", file=sys.stderr)
        raise SystemExit(2)
    index = workers.worker_index()
    if config.workers > 1 and index is None:
        raise SystemExit(workers.supervise(config, sys.argv[1:] if argv is None else argv))
    if index is not None:
        config = workers.as_worker(config, index)
    _raise_open_file_limit()
    try:
        workers.loop_runner(config.loop)(serve(config))
    except GatewayError as exc:
        print(f"gpt-grpc-server: invalid settings: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    except (StateFileError, ConfigError, StoreError, SecretKeyError) as exc:
        print(f"gpt-grpc-server: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
