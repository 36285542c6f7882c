"""``gpt-grpc``: command line client of the gpt-grpc gateway.

Examples::

    gpt-grpc chat "Write a haiku about gRPC"
    gpt-grpc chat --image photo.png "What is in this picture?"
    gpt-grpc chat --model gpt-4o --file report.pdf "Summarize this report"
    ID=$(gpt-grpc conversations create --system "Be brief.")
    gpt-grpc chat --conversation "$ID" "My name is Ada."
    gpt-grpc chat --conversation "$ID" "What is my name?"
    echo "some text" | gpt-grpc count-tokens --model gpt-4o
    gpt-grpc --admin-token-file admin.token configure --api-key-file openai.key
    gpt-grpc --admin-token-file admin.token clients create billing --requests-per-minute 60 > billing.token
    gpt-grpc --token-file billing.token chat "Hello"
    gpt-grpc models
    gpt-grpc upstreams
    gpt-grpc usage

Errors print ``error: <CODE> <reason>: <message>`` on stderr and exit with status 1
(130 on Ctrl-C, 2 on bad usage).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from google.protobuf import duration_pb2
from gptgrpc.v1 import gateway_pb2

from .client import DEFAULT_MODEL, DEFAULT_TARGET, Client
from .errors import GatewayError
from .parts import audio_part, file_part, image_part, user_message

__all__ = ["build_parser", "main"]

TARGET_ENV = "GPT_GRPC_TARGET"
ADMIN_TOKEN_ENV = "GPT_GRPC_ADMIN_TOKEN"
TOKEN_ENV = "GPT_GRPC_TOKEN"
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _CliError(Exception):
    """A local failure (unreadable file, empty prompt...) reported as ``error: <message>``."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``gpt-grpc``."""
    parser = argparse.ArgumentParser(
        prog="gpt-grpc",
        description="Command line client of the gpt-grpc gateway.",
        epilog=f"Environment: {TARGET_ENV} (default target), {TOKEN_ENV} (client token), "
        f"{ADMIN_TOKEN_ENV} (admin token).",
    )
    parser.add_argument(
        "--target",
        default=None,
        metavar="HOST:PORT",
        help=f"gateway address (default: ${TARGET_ENV} or {DEFAULT_TARGET})",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ca", metavar="FILE", help="PEM root certificates (implies --tls)")
    parser.add_argument("--cert", metavar="FILE", help="PEM client certificate chain, for mutual TLS")
    parser.add_argument("--key", metavar="FILE", help="PEM client private key, for mutual TLS")
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"file holding the client token, sent on data-plane calls (default: ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help=f"file holding the admin token, sent on configure and clients calls (default: ${ADMIN_TOKEN_ENV})",
    )
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="deadline of each call")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    chat = commands.add_parser("chat", help="stream an answer to a prompt (in a kept conversation with --conversation)")
    chat.add_argument("prompt", nargs="*", help="the prompt (default: read stdin)")
    chat.add_argument(
        "--conversation",
        metavar="ID",
        help="a turn of this conversation (made by `conversations create`): the gateway sends the earlier turns",
    )
    chat.add_argument("--model", default=None, help=f"model (default: {DEFAULT_MODEL}; not with --conversation)")
    chat.add_argument("--system", default="", metavar="TEXT", help="system message (not with --conversation)")
    chat.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default: 0.7)")
    chat.add_argument("--max-tokens", type=int, metavar="N", help="upper bound on generated tokens")
    chat.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="FILE|URL",
        help="attach an image (PNG, JPEG, GIF, WebP file, or an https URL); repeatable",
    )
    chat.add_argument("--detail", choices=("auto", "low", "high"), help="detail of the attached images")
    chat.add_argument(
        "--file", action="append", default=[], metavar="FILE", help="attach a file (a PDF...); repeatable"
    )
    chat.add_argument(
        "--audio", action="append", default=[], metavar="FILE", help="attach a WAV or MP3 clip; repeatable"
    )
    chat.add_argument(
        "--reasoning-effort", choices=("minimal", "low", "medium", "high"), help="for reasoning models only"
    )
    chat.add_argument(
        "--extra-body", metavar="JSON", help="JSON object merged into the upstream request (e.g. '{\"top_k\": 40}')"
    )
    chat.add_argument("--quiet", "-q", action="store_true", help="no usage summary on stderr")

    count = commands.add_parser("count-tokens", help="count the tokens of a text")
    count.add_argument("text", nargs="*", help="the text (default: read stdin)")
    count.add_argument("--model", default=DEFAULT_MODEL, help=f"model (default: {DEFAULT_MODEL})")

    configure = commands.add_parser("configure", help="change the gateway's upstream settings (admin)")
    key = configure.add_mutually_exclusive_group()
    key.add_argument("--api-key-file", metavar="FILE", help="read the upstream API key from FILE")
    key.add_argument("--api-key-stdin", action="store_true", help="read the upstream API key from stdin")
    configure.add_argument("--endpoint", metavar="URL", help="upstream base URL")
    configure.add_argument("--organization", metavar="ID", help="OpenAI organization ('' clears it)")
    configure.add_argument("--project", metavar="ID", help="OpenAI project ('' clears it)")
    configure.add_argument("--default-model", metavar="MODEL", help="model used when a request names none")
    configure.add_argument("--request-timeout", type=float, metavar="SECONDS", help="timeout of one attempt")
    configure.add_argument("--max-attempts", type=int, metavar="N", help="attempts in all, 1 to 10")
    configure.add_argument("--initial-backoff", type=float, metavar="SECONDS", help="first retry's backoff")
    configure.add_argument("--max-backoff", type=float, metavar="SECONDS", help="cap of any backoff")

    commands.add_parser("config", help="show the current settings (API key masked)")
    commands.add_parser("models", help="list the known models")
    commands.add_parser(
        "upstreams", help="the upstreams: breaker state, calls in flight, recent error rate, fallback models"
    )
    commands.add_parser("usage", help="requests, tokens and cost per model (with a client token: its own)")
    _add_clients_parser(commands)
    _add_conversations_parser(commands)
    return parser


def _add_conversations_parser(commands: Any) -> None:
    conversations = commands.add_parser("conversations", help="conversations the gateway keeps (context assistant)")
    actions = conversations.add_subparsers(dest="conversations_command", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="start a conversation; prints its id on stdout, the rest on stderr")
    create.add_argument("--model", default="", help="model (default: the gateway's default model)")
    create.add_argument("--system", default="", metavar="TEXT", help="system message, sent first in every turn")
    create.add_argument("--max-context-tokens", type=int, metavar="N", help="cap on a turn's prompt + answer")
    create.add_argument(
        "--policy", choices=("trim_oldest", "summarize"), help="how to shorten it past the limit (default: trim_oldest)"
    )
    create.add_argument(
        "--ttl", type=float, metavar="SECONDS", help="time to live after the last turn (default: 7 days)"
    )
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeatable)")
    listing = actions.add_parser("list", help="your conversations, newest first")
    listing.add_argument("--all", action="store_true", help="every client's (with the admin token)")
    show = actions.add_parser("show", help="a conversation's messages")
    show.add_argument("id")
    delete = actions.add_parser("delete", help="delete a conversation")
    delete.add_argument("id")
    delete.add_argument("--admin", action="store_true", help="with the admin token (any client's conversation)")


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests-per-minute", type=int, metavar="N", help="calls per sliding minute")
    parser.add_argument("--tokens-per-minute", type=int, metavar="N", help="prompt + completion tokens per minute")
    parser.add_argument("--budget-usd", type=float, metavar="USD", help="spend allowed per budget period")
    parser.add_argument("--budget-period", choices=("day", "month"), help="period of --budget-usd (UTC)")
    parser.add_argument(
        "--max-in-flight", type=int, metavar="N", help="calls of this client in flight at once (its share of the fleet)"
    )


def _add_clients_parser(commands: Any) -> None:
    clients = commands.add_parser("clients", help="define, list, change and revoke clients (admin)")
    actions = clients.add_subparsers(dest="clients_command", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create", help="define a client; prints its token on stdout (shown this once), the rest on stderr"
    )
    create.add_argument("name", help="letters, digits, '_', '-' and '.', 1 to 64")
    _add_limit_arguments(create)
    listing = actions.add_parser("list", help="list the clients, their limits and spend (never their tokens)")
    listing.add_argument("--all", action="store_true", help="include revoked clients")
    update = actions.add_parser("update", help="replace a client's limits (the limits not given are removed)")
    update.add_argument("name")
    _add_limit_arguments(update)
    revoke = actions.add_parser("revoke", help="revoke a client's token at once")
    revoke.add_argument("name")
    usage = actions.add_parser("usage", help="a client's persisted usage per model")
    usage.add_argument("name")


def _read_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as err:
        raise _CliError(f"cannot read {what} file {path!r}: {err.strerror or err}") from None


def _text_or_stdin(words: Sequence[str], what: str) -> str:
    if words and list(words) != ["-"]:
        return " ".join(words)
    if sys.stdin is None or (sys.stdin.isatty() and not words):
        raise _CliError(f"no {what}: give it as arguments or on stdin")
    return sys.stdin.read()


def _admin_token(args: argparse.Namespace) -> str | None:
    if args.admin_token_file:
        return _read_file(args.admin_token_file, "admin token") or None
    return os.environ.get(ADMIN_TOKEN_ENV, "").strip() or None


def _client_token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        return _read_file(args.token_file, "token") or None
    return os.environ.get(TOKEN_ENV, "").strip() or None


def _client(args: argparse.Namespace, *, admin: bool = False) -> Client:
    """A client with the one token the command needs: the admin token for admin commands, else the client token."""
    if admin:
        return _connect(args, token=None, admin_token=_admin_token(args))
    return _connect(args, token=_client_token(args), admin_token=None)


def _connect(args: argparse.Namespace, *, token: str | None, admin_token: str | None) -> Client:
    target = args.target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
    if (args.cert is None) != (args.key is None):
        raise _CliError("--cert and --key go together")
    try:
        return Client(
            target,
            token=token,
            admin_token=admin_token,
            tls=args.tls,
            root_certificates=_pem_file(args.ca, "CA"),
            private_key=_pem_file(args.key, "key"),
            certificate_chain=_pem_file(args.cert, "certificate"),
            timeout=args.timeout,
        )
    except ValueError as err:
        raise _CliError(str(err)) from None


def _pem_file(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise _CliError(f"cannot read {what} file {path!r}: {err.strerror or err}") from None


def _seconds(duration: duration_pb2.Duration) -> str:
    return f"{duration.seconds + duration.nanos / 1e9:g}s"


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}"


def _print_table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip(), file=out)


def _print_configuration(out: TextIO, config: gateway_pb2.Configuration) -> None:
    policy = config.retry_policy
    rows = [
        ("api_key", config.api_key_masked if config.api_key_set else "(not set)"),
        ("endpoint", config.endpoint),
        ("organization", config.organization),
        ("project", config.project),
        ("default_model", config.default_model),
        ("request_timeout", _seconds(config.request_timeout) if config.HasField("request_timeout") else ""),
        ("max_attempts", str(policy.max_attempts) if policy.HasField("max_attempts") else ""),
        ("initial_backoff", _seconds(policy.initial_backoff) if policy.HasField("initial_backoff") else ""),
        ("max_backoff", _seconds(policy.max_backoff) if policy.HasField("max_backoff") else ""),
        ("generation", str(config.generation)),
    ]
    if config.HasField("upstreams"):  # several upstreams: endpoint and api_key above are not used
        rows.append(("upstreams", f"from the {config.upstreams_source}"))
        for u in config.upstreams.upstreams:
            kind = _UPSTREAM_KINDS.get(u.kind, "openai")
            rows.append((f"  {u.name}", f"{kind} {u.base_url} key {u.api_key_masked} priority {u.priority}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}", file=out)


def _summary_line(summary: gateway_pb2.ChatCompletionSummary | gateway_pb2.ConverseSummary) -> str:
    usage = summary.usage
    finish = gateway_pb2.FinishReason.Name(summary.finish_reason).removeprefix("FINISH_REASON_").lower()
    parts = [
        f"model {summary.model or '?'}",
        f"finish {finish}",
        f"tokens {usage.prompt_tokens} prompt + {usage.completion_tokens} completion"
        f" = {usage.total_tokens}{' (estimated)' if usage.estimated else ''}",
    ]
    if usage.cached_prompt_tokens:
        parts.append(f"{usage.cached_prompt_tokens} cached")
    if usage.reasoning_tokens:
        parts.append(f"{usage.reasoning_tokens} reasoning")
    if summary.upstream:
        parts.append(f"upstream {summary.upstream}")
    parts.append(f"cost {_money(summary.cost_usd) if summary.HasField('cost_usd') else 'unknown'}")
    if summary.attempts > 1:
        parts.append(f"attempts {summary.attempts}")
    return "[" + ", ".join(parts) + "]"


def _turn_line(summary: gateway_pb2.ConverseSummary) -> str:
    parts = [f"context {summary.context_tokens} tokens", f"{summary.trimmed_messages} older messages left out"]
    if summary.HasField("summarization_usage"):
        u = summary.summarization_usage
        cost = _money(summary.summarization_cost_usd) if summary.HasField("summarization_cost_usd") else "unknown"
        parts.append(f"summary written: {u.prompt_tokens} + {u.completion_tokens} tokens, cost {cost}")
    parts.append(f"{summary.message_count} messages kept")
    return "[" + ", ".join(parts) + "]"


def _attachments(args: argparse.Namespace) -> list[gateway_pb2.ContentPart]:
    """The --image, --file and --audio parts, read now (a file that cannot be read is a CLI error)."""
    parts: list[gateway_pb2.ContentPart] = []
    for flag, paths, make in (
        ("image", args.image, lambda p: image_part(p, detail=args.detail)),
        ("file", args.file, file_part),
        ("audio", args.audio, audio_part),
    ):
        for path in paths:
            try:
                parts.append(make(path))
            except OSError as err:
                raise _CliError(f"cannot read {flag} file {path!r}: {err.strerror or err}") from None
            except ValueError as err:
                raise _CliError(f"--{flag} {path}: {err}") from None
    return parts


def _chat(args: argparse.Namespace) -> int:
    prompt = _text_or_stdin(args.prompt, "prompt")
    if not prompt.strip():
        raise _CliError("the prompt is empty")
    if args.conversation is not None:
        if args.model is not None or args.system:
            raise _CliError("a conversation's model and system message are set when it is created")
        if args.image or args.file or args.audio or args.reasoning_effort or args.extra_body:
            raise _CliError(
                "a conversation's turn takes text only (no --image, --file, --audio, --reasoning-effort, --extra-body)"
            )
        return _converse(args, prompt)
    fields: dict[str, Any] = {
        "model": args.model or DEFAULT_MODEL,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
    }
    attached = _attachments(args)
    if attached:
        system = [gateway_pb2.ChatMessage(role=gateway_pb2.ROLE_SYSTEM, content=args.system)] if args.system else []
        fields["messages"] = [*system, user_message(prompt, *attached)]
    else:
        fields.update(system_message=args.system, user_message=prompt)
    if args.reasoning_effort:
        fields["reasoning_effort"] = gateway_pb2.ReasoningEffort.Value(
            f"REASONING_EFFORT_{args.reasoning_effort.upper()}"
        )
    if args.extra_body:
        fields["extra_body_json"] = args.extra_body
    out = sys.stdout
    with _client(args) as client, client.stream_chat(**fields) as stream:
        ends_with_newline = True
        for delta in stream:
            out.write(delta)
            out.flush()
            ends_with_newline = delta.endswith("\n")
        if not ends_with_newline:
            out.write("\n")
            out.flush()
        if stream.refusal:
            print(f"refusal: {stream.refusal}", file=sys.stderr)
        if stream.summary is not None and not args.quiet:
            print(_summary_line(stream.summary), file=sys.stderr)
    return 0


def _converse(args: argparse.Namespace, prompt: str) -> int:
    out = sys.stdout
    with (
        _client(args) as client,
        client.stream_converse(
            args.conversation, prompt, temperature=args.temperature, max_tokens=args.max_tokens
        ) as stream,
    ):
        text = ""
        for delta in stream:
            out.write(delta)
            out.flush()
            text += delta
        if not text.endswith("\n"):
            out.write("\n")
            out.flush()
        if stream.refusal:
            print(f"refusal: {stream.refusal}", file=sys.stderr)
        if stream.summary is not None and not args.quiet:
            print(_summary_line(stream.summary) + " " + _turn_line(stream.summary), file=sys.stderr)
    return 0


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise _CliError(f"--label takes KEY=VALUE, got {pair!r}")
        labels[key] = value
    return labels


def _when_ts(stamp: Any) -> str:
    return str(stamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))


def _print_conversations(out: TextIO, conversations: Sequence[gateway_pb2.Conversation]) -> None:
    rows = [
        (
            c.id,
            c.client or "-",
            c.model,
            gateway_pb2.TrimmingPolicy.Name(c.trimming_policy).lower(),
            str(c.message_count),
            f"{c.context_tokens}/{c.context_limit}",
            _when_ts(c.update_time),
            _when_ts(c.expire_time),
        )
        for c in conversations
    ]
    header = ("ID", "CLIENT", "MODEL", "POLICY", "MESSAGES", "TOKENS/LIMIT", "UPDATED (UTC)", "EXPIRES (UTC)")
    _print_table(out, header, rows)


_ROLE_LABELS = {
    gateway_pb2.ROLE_USER: "user",
    gateway_pb2.ROLE_ASSISTANT: "assistant",
    gateway_pb2.ROLE_TOOL: "tool",
    gateway_pb2.ROLE_SYSTEM: "system",
    gateway_pb2.ROLE_DEVELOPER: "developer",
}


def _conversations(args: argparse.Namespace) -> int:
    action = args.conversations_command
    if (action == "list" and args.all) or (action == "delete" and args.admin):
        # Everyone's conversations: a data-plane call that the admin token may make.
        client = _connect(args, token=_admin_token(args), admin_token=None)
    else:
        client = _client(args)
    with client:
        if action == "create":
            made = client.create_conversation(
                args.model,
                args.system,
                max_context_tokens=args.max_context_tokens,
                trimming_policy=args.policy,
                ttl=args.ttl,
                labels=_labels(args.label),
            )
            print(made.id, flush=True)  # alone on stdout: `ID=$(gpt-grpc conversations create ...)`
            policy = gateway_pb2.TrimmingPolicy.Name(made.trimming_policy).lower()
            print(
                f"created conversation {made.id} (model {made.model}, context limit {made.context_limit} tokens, "
                f"{policy}, expires {_when_ts(made.expire_time)} UTC unless continued)",
                file=sys.stderr,
            )
        elif action == "list":
            _print_conversations(sys.stdout, list(client.iter_conversations()))
        elif action == "show":
            got = client.get_conversation(args.id)
            _print_conversations(sys.stdout, [got.conversation])
            if got.conversation.system_message:
                print(f"\nsystem: {got.conversation.system_message}", file=sys.stdout)
            if got.summary:
                print(f"summary of the first {got.conversation.summarized_messages} messages: {got.summary}")
            for message in got.messages:
                role = _ROLE_LABELS.get(message.role, "?")
                text = message.content + "".join(f" [calls {c.name}({c.arguments_json})]" for c in message.tool_calls)
                print(f"{role}: {text}", file=sys.stdout)
        else:  # delete
            client.delete_conversation(args.id)
            print(f"deleted conversation {args.id}", file=sys.stderr)
    return 0


def _count_tokens(args: argparse.Namespace) -> int:
    text = _text_or_stdin(args.text, "text")
    with _client(args) as client:
        response = client.count_tokens_detailed(text, args.model)
    fallback = " (fallback: unknown model)" if response.encoding_fallback else ""
    print(f"{response.token_count} tokens ({response.encoding}{fallback})")
    return 0


def _configure(args: argparse.Namespace) -> int:
    api_key: str | None = None
    if args.api_key_file:
        api_key = _read_file(args.api_key_file, "API key")
    elif args.api_key_stdin:
        api_key = sys.stdin.read().strip() if sys.stdin is not None else ""
    if api_key is not None and not api_key:
        raise _CliError("the API key is empty")
    with _client(args, admin=True) as client:
        config = client.configure(
            api_key=api_key,
            endpoint=args.endpoint,
            organization=args.organization,
            project=args.project,
            default_model=args.default_model,
            request_timeout=args.request_timeout,
            max_attempts=args.max_attempts,
            initial_backoff=args.initial_backoff,
            max_backoff=args.max_backoff,
        )
    _print_configuration(sys.stdout, config)
    return 0


def _config(args: argparse.Namespace) -> int:
    with _client(args) as client:
        config = client.get_configuration()
    _print_configuration(sys.stdout, config)
    return 0


def _models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.list_models()

    def price(model: gateway_pb2.ModelInfo, field: str) -> str:
        return f"{getattr(model, field):g}" if model.HasField(field) else "-"  # type: ignore[arg-type]

    rows = [
        (
            m.id,
            m.encoding,
            str(m.context_window),
            str(m.max_output_tokens),
            "yes" if m.reasoning else "no",
            price(m, "input_usd_per_million"),
            price(m, "cached_input_usd_per_million"),
            price(m, "output_usd_per_million"),
            m.price_source,
        )
        for m in response.models
    ]
    header = (
        "MODEL",
        "ENCODING",
        "CONTEXT",
        "MAX OUT",
        "REASONING",
        "IN $/M",
        "CACHED $/M",
        "OUT $/M",
        "PRICES",
    )
    _print_table(sys.stdout, header, rows)
    return 0


def _usage(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.get_usage()
    _print_usage(response)
    return 0


def _print_usage(response: gateway_pb2.GetUsageResponse) -> None:
    def row(name: str, u: gateway_pb2.ModelUsage) -> tuple[str, ...]:
        return (
            name,
            str(u.requests),
            str(u.failed_requests),
            str(u.prompt_tokens),
            str(u.completion_tokens),
            str(u.cached_prompt_tokens),
            str(u.reasoning_tokens),
            f"{u.cost_usd:.6f}",
            str(u.unpriced_requests),
        )

    rows = [row(u.model, u) for u in response.models]
    rows.append(row("TOTAL", response.total))
    header = (
        "MODEL",
        "REQUESTS",
        "FAILED",
        "PROMPT",
        "COMPLETION",
        "CACHED",
        "REASONING",
        "COST $",
        "UNPRICED",
    )
    _print_table(sys.stdout, header, rows)
    if response.HasField("since"):
        since = response.since.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")
        print(f"since {since}", file=sys.stdout)
    if response.client:
        print(f"client {response.client}", file=sys.stdout)


def _limits_text(limits: gateway_pb2.ClientLimits) -> tuple[str, str, str, str]:
    rpm = str(limits.requests_per_minute) if limits.HasField("requests_per_minute") else "-"
    tpm = str(limits.tokens_per_minute) if limits.HasField("tokens_per_minute") else "-"
    budget = "-"
    if limits.HasField("budget_usd"):
        period = gateway_pb2.BudgetPeriod.Name(limits.budget_period).removeprefix("BUDGET_PERIOD_").lower()
        budget = f"${limits.budget_usd:g}/{period}"
    in_flight = str(limits.max_in_flight) if limits.HasField("max_in_flight") else "-"
    return rpm, tpm, budget, in_flight


def _when(client: gateway_pb2.Client, field: str) -> str:
    if not client.HasField(field):  # type: ignore[arg-type]
        return "-"
    return str(getattr(client, field).ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))


def _print_clients(out: TextIO, clients: Sequence[gateway_pb2.Client]) -> None:
    rows = [
        (
            c.name,
            c.token_prefix,
            *_limits_text(c.limits),
            f"{c.period_spend_usd:.6f}",
            _when(c, "create_time"),
            _when(c, "revoke_time"),
        )
        for c in clients
    ]
    header = (
        "NAME",
        "TOKEN PREFIX",
        "REQ/MIN",
        "TOKENS/MIN",
        "BUDGET",
        "IN FLIGHT",
        "SPEND $",
        "CREATED (UTC)",
        "REVOKED (UTC)",
    )
    _print_table(out, header, rows)


def _limit_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    if (args.budget_usd is None) != (args.budget_period is None):
        raise _CliError("--budget-usd and --budget-period go together")
    return {
        "requests_per_minute": args.requests_per_minute,
        "tokens_per_minute": args.tokens_per_minute,
        "budget_usd": args.budget_usd,
        "budget_period": args.budget_period,
        "max_in_flight": args.max_in_flight,
    }


def _clients(args: argparse.Namespace) -> int:
    action = args.clients_command
    if action == "usage":
        # A client's persisted usage is a data-plane call (GetUsage) that the admin token may make.
        with _connect(args, token=_admin_token(args), admin_token=None) as client:
            _print_usage(client.get_usage(args.name))
        return 0
    with _client(args, admin=True) as client:
        if action == "create":
            created = client.create_client(args.name, **_limit_kwargs(args))
            # Only the token goes to stdout, so that `... > name.token` stores it and nothing else.
            print(created.token, flush=True)
            rpm, tpm, budget, in_flight = _limits_text(created.client.limits)
            print(
                f"created client {created.client.name} (token prefix {created.client.token_prefix}; requests/min "
                f"{rpm}, tokens/min {tpm}, budget {budget}, in flight {in_flight}). The token is shown this once: "
                "store it now.",
                file=sys.stderr,
            )
        elif action == "list":
            _print_clients(sys.stdout, client.list_clients(include_revoked=args.all))
        elif action == "update":
            _print_clients(sys.stdout, [client.update_client(args.name, **_limit_kwargs(args))])
        else:  # revoke
            revoked = client.revoke_client(args.name)
            print(f"revoked client {revoked.name} (token prefix {revoked.token_prefix})", file=sys.stderr)
    return 0


_BREAKER_STATES = {
    gateway_pb2.BREAKER_STATE_CLOSED: "closed",
    gateway_pb2.BREAKER_STATE_OPEN: "open",
    gateway_pb2.BREAKER_STATE_HALF_OPEN: "half-open",
}
_UPSTREAM_KINDS = {gateway_pb2.UPSTREAM_KIND_AZURE: "azure"}


def _upstreams(args: argparse.Namespace) -> int:
    with _client(args) as client:
        response = client.list_upstreams()
    rows = [
        (
            u.name,
            _UPSTREAM_KINDS.get(u.kind, "openai"),
            u.base_url,
            ",".join(u.models),
            str(u.priority),
            f"{u.weight:g}",
            _BREAKER_STATES.get(u.state, "?"),
            str(u.in_flight),
            f"{u.error_rate:.0%} of {u.recent_attempts}",
            f"{u.retry_in.ToTimedelta().total_seconds():g}s" if u.retry_in.seconds or u.retry_in.nanos else "-",
        )
        for u in response.upstreams
    ]
    header = ("NAME", "KIND", "BASE URL", "MODELS", "PRIORITY", "WEIGHT", "BREAKER", "IN FLIGHT", "ERRORS", "RETRY IN")
    _print_table(sys.stdout, header, rows)
    for fallback in response.fallbacks:
        print(f"fallbacks of {fallback.model}: {', '.join(fallback.fallbacks)}")
    return 0


_COMMANDS = {
    "chat": _chat,
    "count-tokens": _count_tokens,
    "configure": _configure,
    "config": _config,
    "models": _models,
    "upstreams": _upstreams,
    "usage": _usage,
    "clients": _clients,
    "conversations": _conversations,
}


def _report(err: GatewayError) -> None:
    print(f"error: {err}", file=sys.stderr)
    for field, description in err.field_violations:
        print(f"  {field}: {description}", file=sys.stderr)
    for subject, description in err.quota_violations:
        print(f"  {subject}: {description}", file=sys.stderr)
    if err.retry_delay is not None:
        print(f"  retry after {err.retry_delay:g}s", file=sys.stderr)
    if err.request_id:
        print(f"  request id {err.request_id}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gpt-grpc`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    The console script calls it with no arguments and passes the result to ``sys.exit``.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or bad usage (argparse printed why)
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        return _COMMANDS[args.command](args)
    except GatewayError as err:
        _report(err)
        return EXIT_ERROR
    except _CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `gpt-grpc chat ... | head -1`
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
