"""Content parts in one line: text, images, audio and files for a chat message.

>>> from gpt_grpc_client import image_part, text_part, user_message
>>> message = user_message("What is in this picture?", image_part("photo.png"))  # doctest: +SKIP

An image, audio clip or file is given as a path (read here) or as bytes; an
image may also be an ``https://`` or ``data:`` URL, which the gateway passes on
(it never fetches it). The MIME type is taken from the file's extension, else
from the bytes' signature (PNG, JPEG, GIF, WebP; WAV, MP3); give it when
neither tells. Only user messages may carry images, audio and files.
"""

from __future__ import annotations

import mimetypes
import os
from typing import TypeAlias

from gptgrpc.v1 import gateway_pb2

__all__ = [
    "MediaSource",
    "audio_part",
    "file_part",
    "image_part",
    "text_part",
    "user_message",
]

#: A path to read, or the bytes themselves.
MediaSource: TypeAlias = str | os.PathLike[str] | bytes

_DETAILS: dict[str, gateway_pb2.ImageDetail.ValueType] = {
    "auto": gateway_pb2.IMAGE_DETAIL_AUTO,
    "low": gateway_pb2.IMAGE_DETAIL_LOW,
    "high": gateway_pb2.IMAGE_DETAIL_HIGH,
}
_AUDIO_FORMATS: dict[str, gateway_pb2.AudioFormat.ValueType] = {
    "wav": gateway_pb2.AUDIO_FORMAT_WAV,
    "mp3": gateway_pb2.AUDIO_FORMAT_MP3,
}
# The file signatures of the image types the gateway accepts (the WHATWG MIME sniffing table's).
_IMAGE_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_URL_PREFIXES = ("https://", "http://", "data:")


def _read(source: MediaSource) -> tuple[bytes, str | None]:
    """(bytes, file name or None) of a path or of bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        with open(path, "rb") as f:
            return f.read(), os.path.basename(path)
    raise TypeError(f"expected a path or bytes, not {type(source).__name__}")


def _image_type(data: bytes) -> str | None:
    for signature, mime_type in _IMAGE_SIGNATURES:
        if data.startswith(signature):
            return mime_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _guess(name: str | None) -> str | None:
    return mimetypes.guess_type(name, strict=False)[0] if name else None


def text_part(text: str) -> gateway_pb2.ContentPart:
    """A text part."""
    return gateway_pb2.ContentPart(text=text)


def image_part(
    source: MediaSource, *, detail: str | None = None, mime_type: str | None = None
) -> gateway_pb2.ContentPart:
    """An image: a path or bytes (sent inline), or an ``https://``/``data:`` URL (passed on).

    ``detail`` is ``"auto"``, ``"low"`` or ``"high"`` (None: the upstream's default).
    """
    image = gateway_pb2.ImagePart()
    if detail is not None:
        key = detail.strip().lower().removeprefix("image_detail_")
        if key not in _DETAILS:
            raise ValueError(f"unknown image detail {detail!r}; use auto, low or high")
        image.detail = _DETAILS[key]
    if isinstance(source, str) and source.startswith(_URL_PREFIXES):
        image.url = source
        return gateway_pb2.ContentPart(image=image)
    data, name = _read(source)
    guessed = _guess(name)
    mime_type = mime_type or _image_type(data) or (guessed if guessed and guessed.startswith("image/") else None)
    if not mime_type:
        raise ValueError("cannot tell the image's type: give mime_type (image/png, image/jpeg, image/gif, image/webp)")
    image.data, image.mime_type = data, mime_type
    return gateway_pb2.ContentPart(image=image)


def audio_part(source: MediaSource, *, format: str | None = None) -> gateway_pb2.ContentPart:
    """An audio clip (WAV or MP3), from a path or bytes; ``format`` is ``"wav"`` or ``"mp3"``."""
    data, name = _read(source)
    if format is None:
        extension = os.path.splitext(name or "")[1].lower().lstrip(".")
        if extension in _AUDIO_FORMATS:
            format = extension
        elif data[:4] == b"RIFF" and data[8:12] == b"WAVE":
            format = "wav"
        elif data[:3] == b"ID3" or data[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
            format = "mp3"
        else:
            raise ValueError("cannot tell the audio's format: give format='wav' or 'mp3'")
    key = format.strip().lower().removeprefix("audio_format_")
    if key not in _AUDIO_FORMATS:
        raise ValueError(f"unknown audio format {format!r}; use wav or mp3")
    return gateway_pb2.ContentPart(audio=gateway_pb2.AudioPart(data=data, format=_AUDIO_FORMATS[key]))


def file_part(
    source: MediaSource, *, filename: str | None = None, mime_type: str | None = None
) -> gateway_pb2.ContentPart:
    """A file such as a PDF, from a path (its name is the filename) or bytes (give ``filename``).

    An unset ``mime_type`` is left for the gateway to guess from the filename's extension.
    """
    data, name = _read(source)
    filename = filename or name
    if not filename:
        raise ValueError("a file given as bytes needs a filename")
    return gateway_pb2.ContentPart(file=gateway_pb2.FilePart(data=data, filename=filename, mime_type=mime_type or ""))


def user_message(*parts: gateway_pb2.ContentPart | str) -> gateway_pb2.ChatMessage:
    """A user message made of parts (a ``str`` is a text part)."""
    return gateway_pb2.ChatMessage(
        role=gateway_pb2.ROLE_USER, parts=[text_part(p) if isinstance(p, str) else p for p in parts]
    )
