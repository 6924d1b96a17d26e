"""Images in a completion request, before and after the projector (``engine.vision``) sees them.

Pure Python and numpy (no llama.cpp), so the request side can use it in every runner:

- ``place_markers``: where a message's images go in its text (Ollama's rule, server/prompt.go: each
  image is a marker; ``[img]`` placeholders are replaced in order, the other markers prefixed).
- ``decode_images``: the wire's base64 strings → checked bytes (size, format by magic bytes) with
  their sha256, every failure a ``BadRequest`` naming the image's index.
- ``image_token_ids``: the ids that stand for an image's positions in a prompt's token array.
  They are negative, so never a vocabulary id, and derived from the image's content hash and the
  position within the image, so the KV prefix cache (``engine.kv_cache``, which compares token
  arrays) reuses an image that a later request sends again, and never confuses two images.
- ``ImageSpan``/``MediaChunk``: where an image sits in a prompt and the projector's input for it.
- ``EmbeddingCache``: encoded images by content, a small LRU bounded in bytes, so an image whose KV
  cells were evicted is decoded again without being encoded again.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from llmhost.errors import BadRequest

if TYPE_CHECKING:  # not at run time: this module must not load llama.cpp
    from llmhost.engine.vision import MediaChunk

# The text llama.cpp's libmtmd marks an image with (mtmd_default_marker()); the rendered prompt holds
# one per image, as llama-server's does.
MEDIA_MARKER = "<__media__>"
PLACEHOLDER = "[img]"  # Ollama's: a message's images replace these in order
MAX_IMAGE_BYTES = 20 << 20  # decoded bytes per image
# Pixels per image: stb_image decodes to 3 bytes a pixel, so this bounds a small PNG that would
# inflate to gigabytes; 64 Mpx is above any camera's photo.
MAX_IMAGE_PIXELS = 64 << 20
EMBEDDING_CACHE_BYTES = 64 << 20
NO_VISION = "this model does not support images"

# Magic bytes of the formats stb_image decodes and we accept (its others, PSD, TGA, HDR, PIC, are
# not images a client sends, and TGA has no magic). libmtmd hands a buffer it cannot decode to
# ffprobe/ffmpeg, so nothing else may reach it.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"P5", "PGM"),
    (b"P6", "PPM"),
)
WEBP_UNSUPPORTED = "WebP images are not supported; send PNG or JPEG"


def place_markers(content: str, n_images: int, marker: str = MEDIA_MARKER) -> str:
    """``content`` with a marker per image: replacing ``[img]`` placeholders in order while the
    text has one, the rest prefixed (Ollama's ``imageTaggedMessages``)."""
    prefix = ""
    for _ in range(n_images):
        if PLACEHOLDER in content:
            content = content.replace(PLACEHOLDER, marker, 1)
        else:
            prefix += marker
    return prefix + content


def image_list(value: Any, where: str) -> list[str]:
    """A request's ``images`` field: a list of base64 strings (absent or null: none)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise BadRequest(f'{where}"images" must be an array of base64-encoded images')
    return value


@dataclass(frozen=True)
class ImageData:
    """One decoded image of a request: its bytes (a checked format) and their sha256."""

    index: int  # in the request, in Ollama's order (messages first to last); for error messages
    data: bytes
    digest: bytes
    format: str  # "PNG", "JPEG", ...


def decode_images(encoded: list[str]) -> list[ImageData]:
    """Base64 → bytes, checked: at most ``MAX_IMAGE_BYTES`` each and of a format we decode."""
    return [decode_image(i, text) for i, text in enumerate(encoded)]


def decode_image(index: int, text: str) -> ImageData:
    size = _decoded_size(text)
    if size > MAX_IMAGE_BYTES:
        raise BadRequest(f"image {index} is {size} bytes, more than the limit of {MAX_IMAGE_BYTES} bytes "
                         f"({MAX_IMAGE_BYTES >> 20} MiB)")
    try:
        # Go's decoder (Ollama's) skips line breaks; anything else that is not base64 is an error.
        data = base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"image {index} is not valid base64") from None
    if not data:
        raise BadRequest(f"image {index} is empty")
    return ImageData(index, data, hashlib.sha256(data).digest(), image_format(index, data))


def _decoded_size(text: str) -> int:
    n = len(text) - text.count("\n") - text.count("\r")
    return n * 3 // 4 - text[-2:].count("=")


def image_format(index: int, data: bytes) -> str:
    """The format's name by its magic bytes; BadRequest for anything we do not decode."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        raise BadRequest(f"image {index}: {WEBP_UNSUPPORTED}")
    raise BadRequest(f"image {index} is not an image in a supported format (PNG, JPEG, GIF, BMP, PPM or PGM)")


# --- image positions in a token array -----------------------------------------------------------------

_MIX = np.uint64(0x9E3779B97F4A7C15)


def image_token_ids(key: bytes, n: int) -> np.ndarray:
    """``n`` ids for the positions of one image (int32, all ≤ -2: vocabulary ids are ≥ 0 and
    llama.cpp's "no token" is -1), a function of ``key`` (its content hash) and the position."""
    seed = np.uint64(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
    with np.errstate(over="ignore"):  # splitmix64: wrap-around multiplication is the point
        x = seed + (np.arange(1, n + 1, dtype=np.uint64) * _MIX)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    low = (x & np.uint64(0x7FFFFFFF)).astype(np.int64)
    return (-2 - (low % (2**31 - 2))).astype(np.int32)


def image_run_bounds(tokens: np.ndarray, i: int) -> tuple[int, int]:
    """The run of image positions around index ``i`` as [start, end) (empty at ``i`` when ``i`` is
    not inside one: a cut at ``i`` would not split an image)."""
    n = len(tokens)
    if not 0 < i < n or tokens[i] >= -1 or tokens[i - 1] >= -1:
        return i, i
    start, end = i, i
    while start > 0 and tokens[start - 1] < -1:
        start -= 1
    while end < n and tokens[end] < -1:
        end += 1
    return start, end


@dataclass(frozen=True)
class ImageSpan:
    """Positions [start, start + n) of a prompt hold one image piece's embedding rows."""

    start: int
    n: int
    media: MediaChunk

    @property
    def end(self) -> int:
        return self.start + self.n

    def moved(self, delta: int) -> ImageSpan:
        return ImageSpan(self.start + delta, self.n, self.media)


class EmbeddingCache:
    """Encoded images (rows of the text model's input embeddings) by key, least recently used
    dropped first once they hold more than ``max_bytes``. Engine thread only."""

    def __init__(self, max_bytes: int = EMBEDDING_CACHE_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: bytes) -> np.ndarray | None:
        rows = self._items.get(key)
        if rows is not None:
            self._items.move_to_end(key)
        return rows

    def put(self, key: bytes, rows: np.ndarray) -> None:
        if rows.nbytes > self.max_bytes or key in self._items:
            return
        self._items[key] = rows
        self.bytes += rows.nbytes
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.nbytes
