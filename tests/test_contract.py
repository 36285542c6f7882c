"""The Python runner of the language-neutral contract cases (tests/contract/cases.json).

It follows tests/contract/README.md like the Go and TypeScript runners: the stand-in and the
gateway are started by the harness's own start logic (tests/contract/harness.py, as separate
processes with the harness's settings: the stand-in accepts exactly the gateway's API key),
once for this module; every case is one pytest case, run in file order, through the
generated stubs on a grpc.aio channel. CONTRACT_CASES=<path> runs another case file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, message, message_factory
from google.rpc import error_details_pb2, status_pb2
from gptgrpc.v1 import gateway_pb2, gateway_pb2_grpc

from tests.contract import harness

ROOT = Path(__file__).resolve().parent.parent
CASES_PATH = Path(os.environ.get("CONTRACT_CASES") or ROOT / "tests" / "contract" / "cases.json")
SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GPTService"]
ERROR_DOMAIN = "gpt-grpc"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
HTTP_STATUS = re.compile(r"[1-5][0-9][0-9]")
# The google.rpc details of the error view, by key (the first of each kind is shown).
DETAIL_KEYS: tuple[tuple[str, Any], ...] = (
    ("error_info", error_details_pb2.ErrorInfo),
    ("retry_info", error_details_pb2.RetryInfo),
    ("bad_request", error_details_pb2.BadRequest),
)


def _load_cases(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The case file twice: floats as Python floats (requests), and exact (patterns, like Go's json.Number)."""
    text = path.read_text(encoding="utf-8")
    plain, exact = json.loads(text), json.loads(text, parse_float=Decimal)
    if plain.get("schema") != 1 or not plain.get("cases"):
        raise ValueError(f"{path}: want schema 1 with cases")
    if plain.get("service") != SERVICE.full_name:
        raise ValueError(f"{path}: cases are for {plain.get('service')!r}, the stubs know {SERVICE.full_name!r}")
    names = [c["name"] for c in plain["cases"]]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate case names")
    return plain, exact


FILE, EXACT = _load_cases(CASES_PATH)
CASES: list[tuple[dict[str, Any], dict[str, Any]]] = list(zip(FILE["cases"], EXACT["cases"], strict=True))


# --------------------------------------------------------------------------- patterns


def show(value: Any) -> str:
    return json.dumps(value, default=lambda v: float(v) if isinstance(v, Decimal) else str(v))


def _number(value: Any) -> Fraction | None:
    """A JSON number, or a numeric string (proto3 JSON int64), as an exact fraction."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | Decimal | float):
        try:
            return Fraction(value)
        except (ValueError, OverflowError):
            return None
    if isinstance(value, str):
        try:
            return Fraction(value)
        except (ValueError, ZeroDivisionError):
            return None
    return None


def _length(value: Any) -> int:
    return len(value) if isinstance(value, str | list | dict) else -1


def _is_matcher(pattern: Any) -> bool:
    return isinstance(pattern, dict) and bool(pattern) and all(k.startswith("$") for k in pattern)


def _match_matcher(path: str, m: Mapping[str, Any], actual: Any, present: bool) -> str | None:
    if "$present" in m and m["$present"] is not present:
        return f"{path}: want absent, got {show(actual)}" if present else f"{path}: missing"
    if not present:
        return None if set(m) == {"$present"} else f"{path}: missing (want {show(m)})"
    for key in sorted(m):
        arg = m[key]
        if key == "$present":
            continue
        if key in ("$gt", "$gte", "$lt", "$lte"):
            want, got = _number(arg), _number(actual)
            if want is None or got is None:
                return f"{path}: {key} needs numbers, got {show(actual)}"
            ok = {"$gt": got > want, "$gte": got >= want, "$lt": got < want, "$lte": got <= want}[key]
            if not ok:
                return f"{path}: want {key} {show(arg)}, got {show(actual)}"
        elif key == "$nonEmpty":
            if (_length(actual) > 0) != (arg is True):
                return f"{path}: want $nonEmpty={show(arg)}, got {show(actual)}"
        elif key == "$contains":
            if not (isinstance(actual, str) and isinstance(arg, str) and arg in actual):
                return f"{path}: want a string containing {show(arg)}, got {show(actual)}"
        elif key == "$len":
            want = _number(arg)
            if want is None or want.denominator != 1 or _length(actual) != want:
                return f"{path}: want length {show(arg)}, got {show(actual)}"
        else:
            return f"{path}: unknown matcher {key}"
    return None


def match(path: str, pattern: Any, actual: Any) -> str | None:
    """Why ``actual`` does not match ``pattern`` (tests/contract/README.md, "Patterns"); None when it does."""
    if _is_matcher(pattern):
        return _match_matcher(path, pattern, actual, True)
    if isinstance(pattern, dict):
        if not isinstance(actual, dict):
            return f"{path}: want an object, got {show(actual)}"
        for key in sorted(pattern):
            sub = pattern[key]
            if _is_matcher(sub):
                err = _match_matcher(f"{path}.{key}", sub, actual.get(key), key in actual)
            elif key not in actual:
                err = f"{path}.{key}: missing (want {show(sub)})"
            else:
                err = match(f"{path}.{key}", sub, actual[key])
            if err:
                return err
        return None
    if isinstance(pattern, list):
        if not isinstance(actual, list):
            return f"{path}: want an array, got {show(actual)}"
        for i, want in enumerate(pattern):
            if not any(match("", want, element) is None for element in actual):
                return f"{path}[{i}]: no element matches {show(want)} in {show(actual)}"
        return None
    if isinstance(pattern, int | Decimal | float) and not isinstance(pattern, bool):
        got = _number(actual)
        if got is None or got != _number(pattern):
            return f"{path}: want {show(pattern)}, got {show(actual)}"
        return None
    # A string, a boolean or null: equal, of the same JSON type (True is not 1).
    if type(actual) is not type(pattern) or actual != pattern:
        return f"{path}: want {show(pattern)}, got {show(actual)}"
    return None


def to_json(msg: message.Message) -> Any:
    """The README's JSON view of a message, with numbers decoded exactly (as the Go runner does)."""
    view = json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return json.loads(json.dumps(view), parse_float=Decimal)


def check(what: str, pattern: Any, actual: Any) -> None:
    if pattern is None:
        return
    err = match(what, pattern, actual)
    if err:
        pytest.fail(f"{err}\nactual {what}: {show(actual)}", pytrace=False)


# --------------------------------------------------------------------------- the runner


@dataclass
class Services:
    target: str
    standin_url: str
    env: dict[str, str]
    saved: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    log_dir = tmp_path_factory.mktemp("contract-logs")
    with contextlib.ExitStack() as stack:
        try:
            env = stack.enter_context(harness.services(harness.default_options(), log_dir))
        except harness.StartupError as exc:
            logs = "\n".join(f"--- {p.stem}\n{p.read_text(errors='replace')[-4000:]}" for p in log_dir.glob("*.log"))
            pytest.fail(f"harness: {exc}\n{logs}", pytrace=False)
        yield Services(env["GPT_GRPC_TARGET"], env["STANDIN_URL"].rstrip("/"), {**os.environ, **env})


def _http(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, f"stand-in {url}: HTTP {response.status}"
        return json.loads(response.read() or b"null")


async def standin(url: str, body: Any = None) -> Any:
    return await asyncio.to_thread(_http, url, body)


def expand(value: str, services: Services) -> str:
    def one(ref: re.Match[str]) -> str:
        name = ref.group(1)
        if name in services.saved:
            return services.saved[name]
        if name in services.env:
            return services.env[name]
        pytest.fail(f"metadata refers to ${{{name}}}, which is neither saved by an earlier case nor set", pytrace=False)

    return VARIABLE.sub(one, value)


def status_details(err: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    for key, value in err.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return None


def error_view(code: str, message_: str, status: status_pb2.Status | None) -> dict[str, Any]:
    view: dict[str, Any] = {"code": code, "message": message_}
    for detail in status.details if status is not None else ():
        for key, cls in DETAIL_KEYS:
            if key not in view and detail.Is(cls.DESCRIPTOR):
                decoded = cls()
                detail.Unpack(decoded)
                view[key] = to_json(decoded)
    return view


def check_error_invariants(status: status_pb2.Status | None, view: Mapping[str, Any]) -> None:
    infos = [d for d in (status.details if status is not None else ()) if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1, f"the status carries {len(infos)} google.rpc.ErrorInfo, want exactly 1 ({view})"
    info = view["error_info"]
    assert info.get("domain") == ERROR_DOMAIN, f"ErrorInfo.domain = {info.get('domain')!r}"
    reason = gateway_pb2.ErrorReason.DESCRIPTOR.values_by_name.get(info.get("reason", ""))
    assert reason is not None and reason.number != 0, f"ErrorInfo.reason {info.get('reason')!r} is not an ErrorReason"
    http_status = info.get("metadata", {}).get("http_status")
    if http_status is not None:
        assert isinstance(http_status, str) and HTTP_STATUS.fullmatch(http_status), f"http_status = {http_status!r}"


def check_stream(responses: list[message.Message], expect: Mapping[str, Any]) -> None:
    assert responses, "the stream sent no message"
    content, deltas, summary = [], 0, None
    for i, response in enumerate(responses):
        view = to_json(response)
        last = i == len(responses) - 1
        if "delta" in view and not last:
            deltas += 1
            content.append(view["delta"].get("content", ""))
        elif "summary" in view and last:
            summary = view["summary"]
        else:
            pytest.fail(f"stream message {i + 1} of {len(responses)} is {show(view)}: want deltas, then one summary")
    assert summary is not None, "the stream ended without a summary"
    if "content" in expect:
        assert "".join(content) == expect["content"], "deltas concatenated"
    assert deltas >= expect.get("min_deltas", 0), f"{deltas} deltas, want at least {expect.get('min_deltas')}"
    check("summary", expect.get("summary"), summary)


async def call(
    services: Services, rpc: str, request: message.Message, metadata: list[tuple[str, str]], timeout: float
) -> tuple[list[message.Message], grpc.aio.AioRpcError | None]:
    method = SERVICE.methods_by_name[rpc]
    if method.client_streaming:
        pytest.fail(f"{rpc}: client-streaming methods are not supported by this runner")
    responses: list[message.Message] = []
    async with grpc.aio.insecure_channel(services.target) as channel:
        stub = getattr(gateway_pb2_grpc.GPTServiceStub(channel), rpc)
        try:
            if method.server_streaming:
                async for response in stub(request, metadata=metadata, timeout=timeout):
                    responses.append(response)
            else:
                responses.append(await stub(request, metadata=metadata, timeout=timeout))
        except grpc.aio.AioRpcError as err:
            return responses, err
    return responses, None


@pytest.mark.parametrize(("case", "exact"), CASES, ids=[c["name"] for c, _ in CASES])
async def test_contract_case(case: dict[str, Any], exact: dict[str, Any], services: Services) -> None:
    expect = exact["expect"]
    want_code = expect["code"]
    assert want_code in grpc.StatusCode.__members__, f"expect.code {want_code!r} is not a gRPC code name"
    if want_code != "OK":
        assert expect.get("reason"), f"expect.reason is required with code {want_code}"
    method = SERVICE.methods_by_name.get(case["rpc"])
    assert method is not None, f"rpc {case['rpc']!r} is not a method of {SERVICE.full_name}"
    save: dict[str, str] = case.get("save") or {}
    if save:
        assert want_code == "OK" and not method.server_streaming, "save needs expect.code OK on a unary RPC"
        assert all(VARIABLE.fullmatch(f"${{{name}}}") for name in save), f"save: bad variable names {list(save)}"
    request = message_factory.GetMessageClass(method.input_type)()
    json_format.ParseDict(case.get("request") or {}, request)
    timeout = (case.get("timeout_ms") or FILE["defaults"]["timeout_ms"]) / 1000

    # 1-2: reset the stand-in, queue the faults.
    await standin(f"{services.standin_url}/_standin/reset", {})
    if case.get("faults"):
        await standin(f"{services.standin_url}/_standin/faults", {"faults": case["faults"]})

    # 3: call.
    metadata = [(key, expand(value, services)) for key, value in (case.get("metadata") or {}).items()]
    responses, err = await call(services, case["rpc"], request, metadata, timeout)

    # 4: check.
    if err is None:
        assert want_code == "OK", f"status OK, want {want_code}"
        if "stream" in expect:
            check_stream(responses, expect["stream"])
        elif "response" in expect:
            assert len(responses) == 1, f"want one response, got {len(responses)}"
            check("response", expect["response"], to_json(responses[0]))
    else:
        status = status_details(err)
        view = error_view(err.code().name, err.details() or "", status)
        assert err.code().name == want_code, f"status {err.code().name} ({err.details()!r}), want {want_code}: {view}"
        check_error_invariants(status, view)
        assert view["error_info"]["reason"] == expect["reason"], f"ErrorInfo.reason, status {err.details()!r}"
        check("error", expect.get("error"), view)

    if "upstream_chat_requests" in expect:
        stats = await standin(f"{services.standin_url}/_standin/stats")
        assert stats["requests"] == expect["upstream_chat_requests"], "chat requests the stand-in received"
    if "upstream_request" in expect:
        records = await standin(f"{services.standin_url}/_standin/requests")
        assert records, "the stand-in recorded no chat request"
        # Numbers exactly, as the patterns are read (a float would not equal its Decimal).
        body = json.loads(json.dumps(records[-1]["body"]), parse_float=Decimal)
        check("upstream_request", expect["upstream_request"], body)

    # 5: save values for later cases.
    for name, path in save.items():
        services.saved[name] = saved_value(to_json(responses[0]), path)


def saved_value(view: Any, path: str) -> str:
    """The string at ``path`` (dotted proto field names) of a response's JSON view."""
    value = view
    for key in path.split("."):
        if not isinstance(value, dict):
            pytest.fail(f"save: the response has no field {path!r} ({key} is not a message)", pytrace=False)
        if key not in value:  # field names only: the values may be secrets (tokens)
            pytest.fail(f"save: the response has no field {path!r} (fields there: {', '.join(sorted(value))})", False)
        value = value[key]
    if not isinstance(value, str):
        pytest.fail(f"save: {path} is not a string", pytrace=False)
    return value


# --------------------------------------------------------------------------- the matcher itself

ACTUAL = json.loads(
    '{"content":"Echo: ping","usage":{"total_tokens":"12","estimated":false},'
    '"attempts":1,"tags":["a","b"],"violations":[{"field":"temperature","description":"0..2"}]}',
    parse_float=Decimal,
)


@pytest.mark.parametrize(
    "pattern",
    [
        "{}",
        '{"content":"Echo: ping"}',
        '{"usage":{"total_tokens":12}}',
        '{"usage":{"total_tokens":{"$gt":0,"$lte":"12"}}}',
        '{"attempts":1.0}',
        '{"cost_usd":{"$present":false}}',
        '{"content":{"$present":true,"$contains":"ping","$len":10,"$nonEmpty":true}}',
        '{"tags":["b"],"violations":[{"field":"temperature"}]}',
        '{"usage":{"estimated":false}}',
    ],
)
def test_pattern_matches(pattern: str) -> None:
    assert match("$", json.loads(pattern, parse_float=Decimal), ACTUAL) is None


@pytest.mark.parametrize(
    "pattern",
    [
        '{"content":"Echo: pong"}',
        '{"missing":1}',
        '{"usage":{"total_tokens":13}}',
        '{"usage":{"total_tokens":{"$gt":12}}}',
        '{"content":{"$present":false}}',
        '{"cost_usd":{"$gt":0}}',
        '{"tags":["c"]}',
        '{"violations":[{"field":"top_p"}]}',
        '{"content":{"$unknown":1}}',
        '{"usage":{"estimated":"false"}}',
        '{"content":{"$nonEmpty":false}}',
        '{"usage":{"estimated":0}}',
        '{"attempts":true}',
    ],
)
def test_pattern_does_not_match(pattern: str) -> None:
    assert match("$", json.loads(pattern, parse_float=Decimal), ACTUAL) is not None


def _status(*details: message.Message) -> status_pb2.Status:
    status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message="m")
    for detail in details:
        status.details.add().Pack(detail)
    return status


def _view(status: status_pb2.Status) -> dict[str, Any]:
    return error_view("UNAVAILABLE", status.message, status)


def test_error_invariants() -> None:
    def info(reason: str = "UPSTREAM_UNAVAILABLE", domain: str = ERROR_DOMAIN, **metadata: str) -> message.Message:
        return error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata)

    good = _status(info(http_status="503"), error_details_pb2.RetryInfo())
    check_error_invariants(good, _view(good))
    for bad in (
        _status(),
        _status(info(), info()),
        _status(info(domain="other")),
        _status(info(reason="ERROR_REASON_UNSPECIFIED")),
        _status(info(reason="NOT_A_REASON")),
        _status(info(http_status="5030")),
    ):
        with pytest.raises(AssertionError):
            check_error_invariants(bad, _view(bad))


def test_stream_shape() -> None:
    def delta(text: str) -> message.Message:
        return gateway_pb2.StreamChatCompletionResponse(delta=gateway_pb2.ChatCompletionDelta(content=text))

    summary = gateway_pb2.StreamChatCompletionResponse(summary=gateway_pb2.ChatCompletionSummary(attempts=1))
    check_stream([delta("a"), delta("b"), summary], {"content": "ab", "min_deltas": 2, "summary": {"attempts": 1}})
    for bad in ([], [delta("a")], [summary, delta("a")], [delta("a"), summary, summary]):
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            check_stream(bad, {})


def test_saved_value() -> None:
    view = {"token": "gptk_1", "client": {"name": "c", "limits": {"requests_per_minute": 1}}}
    assert saved_value(view, "token") == "gptk_1"
    assert saved_value(view, "client.name") == "c"
    for path in ("missing", "client.missing", "token.deeper", "client.limits.requests_per_minute", "client"):
        with pytest.raises(pytest.fail.Exception):
            saved_value(view, path)
