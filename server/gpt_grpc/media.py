"""Media in chat messages: which types are accepted, how large, and what an image measures.

The limits are the gateway's own, below the 16 MiB a gRPC request may hold
(inline bytes reach the upstream base64-encoded, a third larger):

* one image, audio clip or file: at most `MAX_PART_BYTES` (10 MiB) decoded;
* all the media of one request: at most `MAX_REQUEST_MEDIA_BYTES` (12 MiB);
* at most `MAX_MEDIA_PARTS` (500, OpenAI's number of images per request).

An image's width and height are read from its header with Pillow
(`Image.open` reads the header only; no pixel is decoded), trying only the
decoder of the declared MIME type, so bytes that are not an image of that type
are found before anything is sent upstream. Pillow is imported on first use:
a gateway that never sees an inline image never loads it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import mimetypes
import re
import warnings
from dataclasses import dataclass
from types import ModuleType
from urllib.parse import urlsplit

MiB = 1024 * 1024
MAX_PART_BYTES = 10 * MiB
MAX_REQUEST_MEDIA_BYTES = 12 * MiB
MAX_MEDIA_PARTS = 500
# An image URL is passed through as given (the gateway never fetches it); bounded like any caller's string.
MAX_URL_CHARS = 8192
MAX_FILENAME_CHARS = 255

# Image types OpenAI accepts, and the Pillow decoder of each.
IMAGE_FORMATS: dict[str, str] = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}
AUDIO_FORMATS = ("wav", "mp3")
# A MIME type as RFC 6838 spells one (type/subtype, restricted names), without parameters.
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_DATA_URL = re.compile(r"data:([^;,]*);base64,", re.IGNORECASE)


class MediaError(ValueError):
    """Why some media cannot be sent: the text names the problem, not the bytes."""


@dataclass(frozen=True, slots=True)
class DataUrl:
    """A decoded `data:<mime>;base64,<payload>` URL."""

    mime_type: str
    data: bytes


def parse_data_url(url: str) -> DataUrl:
    """The MIME type and bytes of a base64 data URL; MediaError when it is not one, or holds too much."""
    match = _DATA_URL.match(url)
    if match is None:
        raise MediaError("must be an https URL or a base64 data URL (data:<type>;base64,...)")
    payload = url[match.end() :]
    # Refuse an oversized payload before decoding it: 4 characters carry 3 bytes.
    if len(payload) // 4 * 3 > MAX_PART_BYTES + 3:
        raise MediaError(f"holds more than {MAX_PART_BYTES // MiB} MiB")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("holds data that is not valid base64") from None
    return DataUrl(match.group(1).lower(), data)


def data_url(mime_type: str, data: bytes) -> str:
    """`data:<mime>;base64,<payload>`: how OpenAI takes inline images and files."""
    return f"data:{mime_type};base64,{base64.b64encode(data).decode('ascii')}"


def is_https_url(url: str) -> bool:
    """An https URL with a host, printable, without spaces (the upstream fetches it, never the gateway)."""
    if any(c.isspace() or not c.isprintable() for c in url):
        return False
    try:
        parts = urlsplit(url)
        return parts.scheme == "https" and bool(parts.hostname)
    except ValueError:  # e.g. an invalid IPv6 literal or port
        return False


def is_mime_type(value: str) -> bool:
    return bool(_MIME_TYPE.fullmatch(value))


def guess_mime_type(filename: str) -> str | None:
    """The MIME type of a file name's extension (the standard library's table), or None."""
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed


@functools.cache
def _pillow() -> ModuleType:
    from PIL import Image

    return Image


def image_size(data: bytes, mime_type: str) -> tuple[int, int]:
    """(width, height) of an image of `mime_type` (one of IMAGE_FORMATS), read from its header.

    Raises MediaError when the bytes are not an image of that type, or declare
    more pixels than Pillow will open (its decompression-bomb bound).
    """
    image_module = _pillow()
    decoder = IMAGE_FORMATS[mime_type]
    try:
        with warnings.catch_warnings():
            # Only the header is read: a large declared size costs nothing here.
            warnings.simplefilter("ignore", image_module.DecompressionBombWarning)
            with image_module.open(io.BytesIO(data), formats=(decoder,)) as image:
                width, height = image.size
    except image_module.DecompressionBombError:
        raise MediaError("declares more pixels than the gateway accepts") from None
    except Exception:  # Pillow's decoders raise many kinds on bytes that are not what they expect
        raise MediaError(f"is not a valid {mime_type} image") from None
    if width <= 0 or height <= 0:
        raise MediaError(f"is not a valid {mime_type} image")
    return width, height
