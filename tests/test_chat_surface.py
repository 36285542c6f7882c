"""The chat surface (issue 15), through the generated stubs against the gateway and the stand-in.

* every new request field and every part type reaches the upstream as OpenAI's body
  has it (the stand-in records the body exactly as it arrived);
* logprobs, service tier, system fingerprint and URL citations come back, unary and
  streamed (logprobs with each delta as it arrives);
* invalid parts, oversize media and conflicting options are INVALID_ARGUMENT naming
  the field, before any upstream request (the stand-in saw nothing);
* extra_body_json is logged by key names only.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable
from typing import Any

import grpc
import orjson
import pytest
from gptgrpc.v1 import gateway_pb2 as pb
from PIL import Image

from gpt_grpc import media
from gpt_grpc.chat import TokenLogprob, TopLogprob, UrlCitation
from gpt_grpc.upstream import answers
from tests.conftest import Gateway
from tests.helpers import details, fail
from tests.standin import Fault, RecordedRequest, Standin

MiB = 1024 * 1024
CSV = b"a,b\n1,2\n"


def picture(width: int = 4, height: int = 3, fmt: str = "PNG") -> bytes:
    """A real image of that size and format, made with Pillow (1-bit where the format allows: small and fast)."""
    mode = "1" if fmt in ("PNG", "GIF") else "RGB"
    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, format=fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def user(*parts: pb.ContentPart) -> pb.ChatMessage:
    return pb.ChatMessage(role=pb.ROLE_USER, parts=list(parts))


def text(value: str) -> pb.ContentPart:
    return pb.ContentPart(text=value)


def image(**fields: Any) -> pb.ContentPart:
    return pb.ContentPart(image=pb.ImagePart(**fields))


def audio(data: bytes, fmt: int = pb.AUDIO_FORMAT_WAV) -> pb.ContentPart:
    return pb.ContentPart(audio=pb.AudioPart(data=data, format=fmt))  # type: ignore[arg-type]


def file(data: bytes, filename: str = "report.pdf", mime_type: str = "") -> pb.ContentPart:
    return pb.ContentPart(file=pb.FilePart(data=data, filename=filename, mime_type=mime_type))


def last(standin: Standin) -> RecordedRequest:
    assert standin.requests, "the stand-in received no request"
    return standin.requests[-1]


async def rejected(call: Any, standin: Standin) -> list[str]:
    """The fields of an INVALID_ARGUMENT that no upstream request preceded."""
    err = await fail(call)
    got = details(err)
    assert got.code == grpc.StatusCode.INVALID_ARGUMENT, got
    assert got.reason == "INVALID_REQUEST"
    assert standin.request_count == 0, "the stand-in saw a request"
    return got.fields


# --------------------------------------------------------------------------- parts reach the upstream as OpenAI's


async def test_every_part_type_reaches_the_upstream_as_openai_content_parts(gateway: Gateway, standin: Standin) -> None:
    png, jpeg = picture(4, 3), picture(5, 5, "JPEG")
    wav, pdf = b"RIFF\x24\x00\x00\x00WAVEfmt fake audio", b"%PDF-1.7 fake"
    data_url = f"data:image/gif;base64,{b64(picture(2, 2, 'GIF'))}"
    request = pb.ChatCompletionRequest(
        model="gpt-4o",
        messages=[
            pb.ChatMessage(role=pb.ROLE_SYSTEM, parts=[text("Be brief.")]),
            user(
                text("What is in these?"),
                image(url="https://example.com/cat.png", detail=pb.IMAGE_DETAIL_LOW),
                image(data=png, mime_type="image/png", detail=pb.IMAGE_DETAIL_HIGH),
                image(data=jpeg, mime_type="image/jpeg"),
                image(url=data_url, detail=pb.IMAGE_DETAIL_AUTO),
                audio(wav),
                audio(b"ID3 fake mp3", pb.AUDIO_FORMAT_MP3),
                file(pdf),
                file(CSV, "table.csv", "text/csv"),
            ),
        ],
    )
    response = await gateway.stub.ChatCompletion(request)
    assert response.content == "Echo: What is in these?"  # the stand-in echoes the text parts
    body = last(standin).body
    assert body["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(png)}", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64(jpeg)}"}},
                {"type": "image_url", "image_url": {"url": data_url, "detail": "auto"}},
                {"type": "input_audio", "input_audio": {"data": b64(wav), "format": "wav"}},
                {"type": "input_audio", "input_audio": {"data": b64(b"ID3 fake mp3"), "format": "mp3"}},
                # An empty mime_type is guessed from the filename.
                {
                    "type": "file",
                    "file": {"filename": "report.pdf", "file_data": f"data:application/pdf;base64,{b64(pdf)}"},
                },
                {
                    "type": "file",
                    "file": {
                        "filename": "table.csv",
                        "file_data": f"data:text/csv;base64,{b64(CSV)}",
                    },
                },
            ],
        },
    ]
    # Exactly what arrived: the parsed body is the raw bytes' JSON, each payload once.
    raw = last(standin).raw
    assert orjson.loads(raw) == body
    assert raw.count(b64(png).encode()) == 1


async def test_a_text_message_is_sent_as_before(gateway: Gateway, standin: Standin) -> None:
    await gateway.stub.ChatCompletion(
        pb.ChatCompletionRequest(model="gpt-4o", messages=[pb.ChatMessage(role=pb.ROLE_USER, content="hi")])
    )
    body = last(standin).body
    assert body == {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": False}


async def test_the_stream_sends_parts_too(gateway: Gateway, standin: Standin) -> None:
    png = picture()
    request = pb.StreamChatCompletionRequest(
        model="gpt-4o", messages=[user(text("look"), image(data=png, mime_type="image/png"))]
    )
    events = [e async for e in gateway.stub.StreamChatCompletion(request)]
    assert events[-1].HasField("summary")
    assert last(standin).body["messages"][0]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{b64(png)}"},
    }


# --------------------------------------------------------------------------- request fields reach the upstream


@pytest.mark.parametrize(
    ("model", "fields", "sent"),
    [
        ("o3-mini", {"reasoning_effort": pb.REASONING_EFFORT_HIGH}, {"reasoning_effort": "high"}),
        ("gpt-5", {"reasoning_effort": pb.REASONING_EFFORT_MINIMAL}, {"reasoning_effort": "minimal"}),
        # An unknown name shaped like a reasoning model takes it too.
        ("o4-mini-2031-01-01", {"reasoning_effort": pb.REASONING_EFFORT_LOW}, {"reasoning_effort": "low"}),
        ("gpt-5-mini", {"verbosity": pb.VERBOSITY_LOW}, {"verbosity": "low"}),
        ("gpt-4o", {"logprobs": True, "top_logprobs": 3}, {"logprobs": True, "top_logprobs": 3}),
        ("gpt-4o", {"logprobs": False}, {"logprobs": False}),
        ("gpt-4o", {"service_tier": "flex"}, {"service_tier": "flex"}),
        (
            "gpt-4o",
            {"metadata": {"team": "search", "ticket": "T-1"}},
            {"metadata": {"team": "search", "ticket": "T-1"}},
        ),
        ("gpt-4o", {"store": True}, {"store": True}),
        (
            "gpt-4o",
            {"parallel_tool_calls": False, "tools": [pb.Tool(name="f")]},
            {"parallel_tool_calls": False, "tools": [{"type": "function", "function": {"name": "f"}}]},
        ),
        (
            "gpt-4o",
            {"extra_body_json": '{"top_k": 40, "guided_json": {"type": "object"}, "options": {"num_ctx": 8192}}'},
            {"top_k": 40, "guided_json": {"type": "object"}, "options": {"num_ctx": 8192}},
        ),
        # The reasoning rewrite still applies (max_tokens renamed, temperature dropped); extra_body_json,
        # merged after it, is the caller's way to send a parameter the model's quirks would drop.
        (
            "o3-mini",
            {"max_tokens": 50, "top_p": 0.5, "extra_body_json": '{"temperature": 1}'},
            {"max_completion_tokens": 50, "temperature": 1},
        ),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_each_request_field_reaches_the_upstream(
    gateway: Gateway, standin: Standin, model: str, fields: dict[str, Any], sent: dict[str, Any], stream: bool
) -> None:
    if stream:
        request: Any = pb.StreamChatCompletionRequest(model=model, user_message="hi", **fields)
        assert [e async for e in gateway.stub.StreamChatCompletion(request)][-1].HasField("summary")
    else:
        await gateway.stub.ChatCompletion(pb.ChatCompletionRequest(model=model, user_message="hi", **fields))
    body = last(standin).body
    expected = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream, **sent}
    if stream:
        expected["stream_options"] = {"include_usage": True}
    assert body == expected


# --------------------------------------------------------------------------- answers: logprobs, tier, citations


async def test_logprobs_come_back_per_token_unary(gateway: Gateway, standin: Standin) -> None:
    response = await gateway.stub.ChatCompletion(
        pb.ChatCompletionRequest(model="gpt-4o", user_message="two words", logprobs=True, top_logprobs=2)
    )
    # The stand-in's logprob of piece i is -0.1 (i + 1); its alternatives are the piece and "alt1", 1 lower.
    assert [t.token for t in response.logprobs] == ["Echo: ", "two ", "words"]
    assert [round(t.logprob, 6) for t in response.logprobs] == [-0.1, -0.2, -0.3]
    first = response.logprobs[0]
    assert first.bytes == b"Echo: "
    assert [(a.token, round(a.logprob, 6), a.bytes) for a in first.top_logprobs] == [
        ("Echo: ", -0.1, b"Echo: "),
        ("alt1", -1.1, b"alt1"),
    ]
    assert response.service_tier == "default"
    assert response.system_fingerprint == "fp_standin"


async def test_logprobs_arrive_with_each_delta(gateway: Gateway, standin: Standin) -> None:
    request = pb.StreamChatCompletionRequest(model="gpt-4o", user_message="a b c", logprobs=True, top_logprobs=1)
    events = [e async for e in gateway.stub.StreamChatCompletion(request)]
    deltas = [e.delta for e in events if e.HasField("delta")]
    assert [d.content for d in deltas] == ["Echo: ", "a ", "b ", "c"]
    for i, delta in enumerate(deltas):
        assert [(t.token, round(t.logprob, 6)) for t in delta.logprobs] == [(delta.content, round(-0.1 * (i + 1), 6))]
        assert [a.token for a in delta.logprobs[0].top_logprobs] == [delta.content]
    summary = events[-1].summary
    assert (summary.service_tier, summary.system_fingerprint) == ("default", "fp_standin")


async def test_no_logprobs_unless_asked(gateway: Gateway, standin: Standin) -> None:
    response = await gateway.stub.ChatCompletion(pb.ChatCompletionRequest(model="gpt-4o", user_message="x"))
    assert not response.logprobs and not response.annotations
    events = [e async for e in gateway.stub.StreamChatCompletion(pb.StreamChatCompletionRequest(user_message="x"))]
    assert all(not e.delta.logprobs for e in events if e.HasField("delta"))


async def test_the_tier_asked_for_comes_back(gateway: Gateway, standin: Standin) -> None:
    response = await gateway.stub.ChatCompletion(
        pb.ChatCompletionRequest(model="gpt-4o", user_message="x", service_tier="priority")
    )
    assert response.service_tier == "priority"


async def test_url_citations_come_back(gateway: Gateway, standin: Standin) -> None:
    model = "gpt-4o-search-preview"
    response = await gateway.stub.ChatCompletion(pb.ChatCompletionRequest(model=model, user_message="news"))
    expected = pb.UrlCitation(
        url="https://example.com/standin-source", title="Stand-in source", start_index=0, end_index=len("Echo: news")
    )
    assert list(response.annotations) == [expected]
    events = [
        e
        async for e in gateway.stub.StreamChatCompletion(
            pb.StreamChatCompletionRequest(model=model, user_message="news")
        )
    ]
    assert list(events[-1].summary.annotations) == [expected]


# --------------------------------------------------------------------------- refused before the upstream

PNG = picture()
PDF = b"%PDF-1.7"


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (pb.ChatMessage(role=pb.ROLE_USER, content="hi", parts=[text("hi")]), "messages[0].parts"),
        (user(pb.ContentPart()), "messages[0].parts[0]"),
        (user(text("")), "messages[0].parts[0].text"),
        (user(image()), "messages[0].parts[0].image"),
        (user(image(url="https://e.com/a.png", data=PNG, mime_type="image/png")), "messages[0].parts[0].image"),
        (user(image(url="http://e.com/a.png")), "messages[0].parts[0].image.url"),
        (user(image(url="ftp://e.com/a.png")), "messages[0].parts[0].image.url"),
        (user(image(url="https://")), "messages[0].parts[0].image.url"),
        (user(image(url="https:///no-host.png")), "messages[0].parts[0].image.url"),
        (user(image(url="https://[::1/a.png")), "messages[0].parts[0].image.url"),
        (user(image(url="https://e.com/a b.png")), "messages[0].parts[0].image.url"),
        (user(image(url="https://e.com/" + "a" * 9000)), "messages[0].parts[0].image.url"),
        (user(image(url="data:image/png;base64,!!!not base64")), "messages[0].parts[0].image.url"),
        (user(image(url=f"data:text/plain;base64,{b64(b'hello')}")), "messages[0].parts[0].image.url"),
        (user(image(url=f"data:image/png;base64,{b64(b'not a png')}")), "messages[0].parts[0].image.url"),
        (user(image(data=PNG)), "messages[0].parts[0].image.mime_type"),
        (user(image(data=PNG, mime_type="image/bmp")), "messages[0].parts[0].image.mime_type"),
        (user(image(data=PNG, mime_type="image/jpeg")), "messages[0].parts[0].image.data"),
        (user(image(data=b"\x89PNG but not really", mime_type="image/png")), "messages[0].parts[0].image.data"),
        (user(image(data=PNG, mime_type="image/png", detail=9)), "messages[0].parts[0].image.detail"),  # type: ignore[arg-type]
        (user(audio(b"RIFF", pb.AUDIO_FORMAT_UNSPECIFIED)), "messages[0].parts[0].audio.format"),
        (user(audio(b"RIFF", 7)), "messages[0].parts[0].audio.format"),
        (user(audio(b"")), "messages[0].parts[0].audio.data"),
        (user(file(b"")), "messages[0].parts[0].file.data"),
        (user(file(PDF, "")), "messages[0].parts[0].file.filename"),
        (user(file(PDF, "../etc/report.pdf")), "messages[0].parts[0].file.filename"),
        (user(file(PDF, "report.unknownext")), "messages[0].parts[0].file.mime_type"),
        (user(file(PDF, "report.pdf", "not a mime type")), "messages[0].parts[0].file.mime_type"),
        (pb.ChatMessage(role=pb.ROLE_SYSTEM, parts=[image(url="https://e.com/a.png")]), "messages[0].parts[0]"),
        (pb.ChatMessage(role=pb.ROLE_ASSISTANT, parts=[file(PDF)]), "messages[0].parts[0]"),
        (pb.ChatMessage(role=pb.ROLE_DEVELOPER, parts=[audio(b"RIFF")]), "messages[0].parts[0]"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_invalid_parts_are_refused_before_the_upstream(
    gateway: Gateway, standin: Standin, message: pb.ChatMessage, field: str, stream: bool
) -> None:
    if stream:
        call: Any = gateway.stub.StreamChatCompletion(pb.StreamChatCompletionRequest(messages=[message])).read()
    else:
        call = gateway.stub.ChatCompletion(pb.ChatCompletionRequest(messages=[message]))
    assert field in await rejected(call, standin)


@pytest.mark.parametrize(
    ("parts", "field", "description"),
    [
        # One part over 10 MiB (the gRPC request itself stays under its 16 MiB limit).
        ([file(b"%" * (10 * MiB + 1))], "messages[0].parts[0].file.data", "at most 10 MiB"),
        ([audio(b"R" * (10 * MiB + 1))], "messages[0].parts[0].audio.data", "at most 10 MiB"),
        ([image(data=b"\x89" * (10 * MiB + 1), mime_type="image/png")], "messages[0].parts[0].image.data", "10 MiB"),
        # Each part fits, the request's 12 MiB in all does not.
        ([file(b"%" * (7 * MiB)), file(b"%" * (7 * MiB))], "messages", "at most 12 MiB in all"),
        # A data URL's payload counts decoded.
        (
            [image(url="data:image/png;base64," + "A" * (14 * MiB + 4))],
            "messages[0].parts[0].image.url",
            "more than 10 MiB",
        ),
        ([image(url="https://e.com/a.png")] * (media.MAX_MEDIA_PARTS + 1), "messages", "at most 500"),
    ],
)
async def test_oversize_media_is_refused_before_the_upstream(
    gateway: Gateway, standin: Standin, parts: list[pb.ContentPart], field: str, description: str
) -> None:
    err = await fail(gateway.stub.ChatCompletion(pb.ChatCompletionRequest(model="gpt-4o", messages=[user(*parts)])))
    got = details(err)
    assert got.code == grpc.StatusCode.INVALID_ARGUMENT
    assert standin.request_count == 0
    violations = {v.field: v.description for v in got.bad_request.field_violations}  # type: ignore[union-attr]
    assert description in violations[field], violations


@pytest.mark.parametrize(
    ("model", "fields", "field", "description"),
    [
        ("gpt-4o", {"reasoning_effort": pb.REASONING_EFFORT_HIGH}, "reasoning_effort", "not a reasoning model"),
        ("gpt-5-chat-latest", {"reasoning_effort": pb.REASONING_EFFORT_LOW}, "reasoning_effort", "reasoning"),
        ("llama3", {"reasoning_effort": pb.REASONING_EFFORT_LOW}, "reasoning_effort", "extra_body_json"),
        ("o3-mini", {"reasoning_effort": 9}, "reasoning_effort", "MINIMAL, LOW, MEDIUM, HIGH"),
        ("gpt-4o", {"verbosity": pb.VERBOSITY_HIGH}, "verbosity", "gpt-5 models do"),
        ("o3", {"verbosity": pb.VERBOSITY_HIGH}, "verbosity", "does not take it"),
        ("gpt-4o", {"logprobs": True, "top_logprobs": 21}, "top_logprobs", "between 0 and 20"),
        ("gpt-4o", {"logprobs": True, "top_logprobs": -1}, "top_logprobs", "between 0 and 20"),
        ("gpt-4o", {"top_logprobs": 2}, "top_logprobs", "needs logprobs"),
        ("gpt-4o", {"logprobs": False, "top_logprobs": 2}, "top_logprobs", "needs logprobs"),
        ("gpt-4o", {"parallel_tool_calls": True}, "parallel_tool_calls", "needs tools"),
        ("gpt-4o", {"service_tier": "Priority Now"}, "service_tier", "lower-case"),
        ("gpt-4o", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "at most 16"),
        ("gpt-4o", {"metadata": {"k" * 65: "v"}}, "metadata", "keys"),
        ("gpt-4o", {"metadata": {"k": "v" * 513}}, "metadata", "values"),
        ("gpt-4o", {"extra_body_json": '{"model": "gpt-4o-mini"}'}, "extra_body_json", "'model': the gateway sets it"),
        ("gpt-4o", {"extra_body_json": '{"messages": []}'}, "extra_body_json", "the gateway sets it"),
        ("gpt-4o", {"extra_body_json": '{"stream": true}'}, "extra_body_json", "the gateway sets it"),
        ("gpt-4o", {"extra_body_json": '{"stream_options": {}}'}, "extra_body_json", "the gateway sets it"),
        ("gpt-4o", {"extra_body_json": '{"max_tokens": 5}'}, "extra_body_json", "the gateway sets it"),
        ("o3", {"extra_body_json": '{"max_completion_tokens": 5}'}, "extra_body_json", "the gateway sets it"),
        ("gpt-4o", {"extra_body_json": '{"n": 3}'}, "extra_body_json", "'n': the gateway sets it"),
        (
            "gpt-4o",
            {"temperature": 0.2, "extra_body_json": '{"temperature": 1}'},
            "extra_body_json",
            "a field of the request sets it",
        ),
        ("gpt-4o", {"extra_body_json": "[1, 2]"}, "extra_body_json", "JSON object"),
        ("gpt-4o", {"extra_body_json": "{not json"}, "extra_body_json", "JSON object"),
        ("gpt-4o", {"extra_body_json": '{"a": "' + "x" * (256 * 1024) + '"}'}, "extra_body_json", "at most 262144"),
        ("gpt-4o", {"extra_body_json": '{"a": ' * 200 + "1" + "}" * 200}, "extra_body_json", "nested"),
    ],
)
async def test_invalid_options_are_refused_before_the_upstream(
    gateway: Gateway, standin: Standin, model: str, fields: dict[str, Any], field: str, description: str
) -> None:
    err = await fail(gateway.stub.ChatCompletion(pb.ChatCompletionRequest(model=model, user_message="hi", **fields)))
    got = details(err)
    assert got.code == grpc.StatusCode.INVALID_ARGUMENT, got
    assert standin.request_count == 0
    violations = {v.field: v.description for v in got.bad_request.field_violations}  # type: ignore[union-attr]
    assert description in violations.get(field, ""), violations


async def test_every_violation_is_reported_at_once(gateway: Gateway, standin: Standin) -> None:
    request = pb.ChatCompletionRequest(
        model="gpt-4o",
        messages=[user(image(data=PNG, mime_type="image/bmp"), file(PDF, ""))],
        reasoning_effort=pb.REASONING_EFFORT_HIGH,
        extra_body_json='{"model": "x"}',
    )
    fields = await rejected(gateway.stub.ChatCompletion(request), standin)
    assert set(fields) == {
        "messages[0].parts[0].image.mime_type",
        "messages[0].parts[1].file.filename",
        "reasoning_effort",
        "extra_body_json",
    }


# --------------------------------------------------------------------------- extra_body_json is logged by key names


async def test_extra_body_json_is_logged_by_key_names_only(
    gateway: Gateway, standin: Standin, caplog: pytest.LogCaptureFixture
) -> None:
    secret_value = "value-that-must-not-be-logged-7b1e"
    request = pb.ChatCompletionRequest(
        model="gpt-4o",
        user_message="hi",
        extra_body_json=orjson.dumps({"top_k": 40, "guided_regex": secret_value}).decode(),
    )
    with caplog.at_level(logging.DEBUG):
        await gateway.stub.ChatCompletion(request)
        refused = request.__class__()
        refused.CopyFrom(request)
        refused.extra_body_json = orjson.dumps({"model": secret_value}).decode()
        await fail(gateway.stub.ChatCompletion(refused))
    lines = [r for r in caplog.records if r.name == "gpt_grpc.access"]
    assert [r.fields["extra_body_keys"] for r in lines] == [["top_k", "guided_regex"], ["model"]]  # type: ignore[attr-defined]
    everything = "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')} {r.exc_text or ''}" for r in caplog.records)
    assert secret_value not in everything
    assert last(standin).body["guided_regex"] == secret_value  # it did reach the upstream


# --------------------------------------------------------------------------- ListModels


async def test_list_models_shows_the_image_figures(gateway: Gateway) -> None:
    models = {m.id: m for m in (await gateway.stub.ListModels(pb.ListModelsRequest())).models}
    figures: Callable[[pb.ModelInfo], tuple[Any, ...]] = lambda m: (  # noqa: E731
        m.image_base_tokens if m.HasField("image_base_tokens") else None,
        m.image_tile_tokens if m.HasField("image_tile_tokens") else None,
        m.image_patch_multiplier if m.HasField("image_patch_multiplier") else None,
    )
    assert figures(models["gpt-4o"]) == (85, 170, None)
    assert figures(models["gpt-4o-mini"]) == (2833, 5667, None)
    assert figures(models["o1"]) == (75, 150, None)
    assert figures(models["gpt-4.1-mini"]) == (None, None, 1.62)
    assert figures(models["o3-mini"]) == (None, None, None)
    assert models["gpt-5"].verbosity and not models["gpt-4o"].verbosity


# --------------------------------------------------------------------------- the usage estimate counts images


async def test_the_usage_estimate_counts_images_as_count_tokens_does(gateway: Gateway, standin: Standin) -> None:
    """An upstream that reports no usage: the gateway's own count bills the image like CountTokens."""
    messages = [user(text("what is this?"), image(data=picture(1024, 1024), mime_type="image/png"))]
    standin.enqueue(Fault("no_usage"))
    response = await gateway.stub.ChatCompletion(pb.ChatCompletionRequest(model="gpt-4o", messages=messages))
    assert response.usage.estimated
    counted = await gateway.stub.CountTokens(pb.CountTokensRequest(model="gpt-4o", messages=messages))
    assert response.usage.prompt_tokens == counted.token_count
    # 1024x1024 at auto on gpt-4o: 768x768, 4 tiles, 85 + 4*170 = 765 of them are the image.
    assert counted.token_count > 765


# --------------------------------------------------------------------------- tolerant reading of the extras


def test_misshapen_logprobs_and_citations_are_skipped_not_fatal() -> None:
    value = {
        "content": [
            {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": [{"token": "b", "logprob": -1}, "junk"]},
            {"token": "c", "logprob": "not a number"},
            {"token": "d", "logprob": -0.25, "bytes": [300, -1]},
            {"token": "e", "logprob": float("nan")},
            "junk",
        ]
    }
    assert answers.logprobs(value) == (
        TokenLogprob("a", -0.5, b"a", (TopLogprob("b", -1.0),)),
        TokenLogprob("d", -0.25, b""),
    )
    assert answers.logprobs(None) == answers.logprobs({"content": None}) == answers.logprobs([1]) == ()
    cited = [
        {
            "type": "url_citation",
            "url_citation": {"url": "https://a.example", "title": "A", "start_index": 1, "end_index": 4},
        },
        {"type": "url_citation", "url_citation": {"url": "https://b.example", "start_index": -3, "end_index": 2**40}},
        {"type": "url_citation", "url_citation": {"title": "no url"}},
        {"type": "file_citation", "file_citation": {}},
        None,
    ]
    assert answers.citations(cited) == (
        UrlCitation("https://a.example", "A", 1, 4),
        UrlCitation("https://b.example", "", 0, 0),
    )
    assert answers.citations("junk") == ()
