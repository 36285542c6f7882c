"""The Python client's one-liners for parts, and the CLI's --image/--file/--audio, against the real gateway.

`image_part(path_or_bytes)`, `file_part(...)`, `audio_part(...)` build the parts; a chat
with them reaches the stand-in as OpenAI's content parts (what it recorded is checked).
"""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import pytest
from gptgrpc.v1 import gateway_pb2 as pb
from PIL import Image

from gpt_grpc_client import (
    AsyncClient,
    audio_part,
    cli,
    file_part,
    image_part,
    text_part,
    to_chat_message,
    user_message,
)
from tests.conftest import Gateway
from tests.standin import Standin


def png(width: int = 3, height: int = 2, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height)).save(out, format=fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --------------------------------------------------------------------------- the one-liners


def test_image_part_from_a_path_bytes_or_a_url(tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"  # the bytes' signature wins over the extension
    photo.write_bytes(png())
    assert image_part(photo) == pb.ContentPart(image=pb.ImagePart(data=png(), mime_type="image/png"))
    assert image_part(str(photo), detail="low").image.detail == pb.IMAGE_DETAIL_LOW
    for fmt, mime_type in (("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")):
        assert image_part(png(fmt=fmt)).image.mime_type == mime_type
    url = image_part("https://example.com/a.png", detail="high")
    assert url == pb.ContentPart(image=pb.ImagePart(url="https://example.com/a.png", detail=pb.IMAGE_DETAIL_HIGH))
    assert image_part("data:image/png;base64,AAAA").image.url == "data:image/png;base64,AAAA"
    # Unknown bytes: the extension tells, else mime_type must be given.
    odd = tmp_path / "odd.webp"
    odd.write_bytes(b"????")
    assert image_part(odd).image.mime_type == "image/webp"
    assert image_part(b"????", mime_type="image/png").image.mime_type == "image/png"
    with pytest.raises(ValueError, match="give mime_type"):
        image_part(b"????")
    with pytest.raises(ValueError, match="auto, low or high"):
        image_part(png(), detail="ultra")
    with pytest.raises(FileNotFoundError):
        image_part(tmp_path / "missing.png")
    with pytest.raises(TypeError):
        image_part(42)  # type: ignore[arg-type]


def test_audio_and_file_parts(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp3"
    clip.write_bytes(b"\xff\xfbframes")
    assert audio_part(clip) == pb.ContentPart(audio=pb.AudioPart(data=b"\xff\xfbframes", format=pb.AUDIO_FORMAT_MP3))
    assert audio_part(b"RIFF\0\0\0\0WAVEfmt ").audio.format == pb.AUDIO_FORMAT_WAV
    assert audio_part(b"ID3\x04rest").audio.format == pb.AUDIO_FORMAT_MP3
    assert audio_part(b"raw", format="wav").audio.format == pb.AUDIO_FORMAT_WAV
    with pytest.raises(ValueError, match="give format"):
        audio_part(b"raw")
    with pytest.raises(ValueError, match="wav or mp3"):
        audio_part(b"raw", format="ogg")
    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF-1.7")
    assert file_part(report) == pb.ContentPart(file=pb.FilePart(data=b"%PDF-1.7", filename="report.pdf"))
    assert file_part(b"a,b", filename="t.csv", mime_type="text/csv").file.mime_type == "text/csv"
    with pytest.raises(ValueError, match="needs a filename"):
        file_part(b"%PDF")


def test_messages_of_parts() -> None:
    message = user_message("what is it?", image_part("https://e.com/a.png"))
    assert message.role == pb.ROLE_USER
    assert list(message.parts) == [text_part("what is it?"), image_part("https://e.com/a.png")]
    assert to_chat_message({"role": "user", "parts": ["hi", image_part("https://e.com/a.png")]}) == user_message(
        "hi", image_part("https://e.com/a.png")
    )
    with pytest.raises(TypeError, match="ContentPart or a str"):
        to_chat_message({"role": "user", "parts": [{"text": "hi"}]})


# --------------------------------------------------------------------------- against the gateway


async def test_the_client_sends_parts_and_new_fields_end_to_end(gateway: Gateway, standin: Standin) -> None:
    picture = png()
    async with AsyncClient(gateway.target, timeout=10) as client:
        response = await client.chat(
            model="o3",
            messages=[
                user_message("describe", image_part(picture, detail="low"), file_part(b"%PDF", filename="a.pdf"))
            ],
            reasoning_effort=pb.REASONING_EFFORT_MEDIUM,
            extra_body_json='{"top_k": 5}',
            temperature=None,
        )
    assert response.content == "Echo: describe"
    body = standin.requests[-1].body
    assert body["reasoning_effort"] == "medium" and body["top_k"] == 5
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(picture)}", "detail": "low"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{b64(b'%PDF')}"}},
    ]


async def test_cli_chat_with_an_image_and_a_file(
    gateway: Gateway, standin: Standin, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo, report, clip = tmp_path / "photo.png", tmp_path / "doc.pdf", tmp_path / "clip.wav"
    photo.write_bytes(png())
    report.write_bytes(b"%PDF-1.7 report")
    clip.write_bytes(b"RIFF\0\0\0\0WAVEfmt ")

    async def run(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(cli.main, ["--target", gateway.target, "--timeout", "10", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    argv = ["chat", "-q", "--model", "gpt-4o", "--system", "Be brief.", "--image", str(photo), "--detail", "high"]
    code, out, err = await run(*argv, "--file", str(report), "--audio", str(clip), "what is in this picture?")
    assert (code, out) == (0, "Echo: what is in this picture?\n"), err
    messages = standin.requests[-1].body["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["role"] == "user"
    assert messages[1]["content"] == [
        {"type": "text", "text": "what is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64(png())}", "detail": "high"}},
        {
            "type": "file",
            "file": {"filename": "doc.pdf", "file_data": f"data:application/pdf;base64,{b64(b'%PDF-1.7 report')}"},
        },
        {"type": "input_audio", "input_audio": {"data": b64(b"RIFF\0\0\0\0WAVEfmt "), "format": "wav"}},
    ]

    code, _, err = await run(
        "chat", "--model", "o3-mini", "--reasoning-effort", "high", "--extra-body", '{"a": 1}', "x"
    )
    assert code == 0, err
    body = standin.requests[-1].body
    assert (body["reasoning_effort"], body["a"], body["messages"]) == ("high", 1, [{"role": "user", "content": "x"}])

    # Local failures: an unreadable file, a type that cannot be told; the gateway's refusal, with its field.
    count = standin.request_count
    code, _, err = await run("chat", "--image", str(tmp_path / "missing.png"), "x")
    assert code == 1 and "cannot read image file" in err
    (tmp_path / "odd.bin").write_bytes(b"????")
    code, _, err = await run("chat", "--image", str(tmp_path / "odd.bin"), "x")
    assert code == 1 and "give mime_type" in err
    code, _, err = await run("chat", "--model", "gpt-4o", "--reasoning-effort", "low", "x")
    assert code == 1 and "INVALID_ARGUMENT" in err and "reasoning_effort:" in err
    assert standin.request_count == count
