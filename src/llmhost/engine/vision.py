"""The multimodal projector (``--mmproj``): llama.cpp's libmtmd through llama-cpp-python's ctypes
bindings, the only module besides ``llamacpp`` that imports ``llama_cpp``.

``Projector`` loads the projector GGUF against the text model, decodes an image's bytes into a bitmap
and tokenizes it into pieces: the image's own text tokens (begin/end markers some models use) and
``MediaChunk``s, each the projector's input for ``n_tokens`` positions. ``ImageEncoder`` turns a
chunk into embedding rows on the engine thread (``mtmd_encode_chunk``), through an
``EmbeddingCache`` keyed by content, so a resent image is encoded once.

Bitmaps are decoded by the stb_image that libmtmd exports, called directly: libmtmd's own helper
passes a buffer stb cannot decode on to ffprobe/ffmpeg (a process per bad image), and the image's
dimensions are checked (``stbi_info_from_memory``) before anything is decompressed.

Not supported (refused at load): projectors whose model takes M-RoPE positions (Qwen2-VL and later:
an image's positions are not one per row) and audio-only ones.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

import llama_cpp.mtmd_cpp as M
import numpy as np

from llmhost.engine.images import MAX_IMAGE_PIXELS, EmbeddingCache, ImageData
from llmhost.engine.llamacpp import LoadError, Model, native_error, native_log_callback, reset_native_error
from llmhost.errors import BadRequest

log = logging.getLogger(__name__)

_lib = M._libmtmd
_c_int_p = ctypes.POINTER(ctypes.c_int)


def _stbi():
    """stb_image's entry points in libmtmd (None where a build does not export them)."""
    try:
        info, load, free, reason = (_lib.stbi_info_from_memory, _lib.stbi_load_from_memory,
                                    _lib.stbi_image_free, _lib.stbi_failure_reason)
    except AttributeError:
        return None
    info.argtypes = [ctypes.c_char_p, ctypes.c_int, _c_int_p, _c_int_p, _c_int_p]
    info.restype = ctypes.c_int
    load.argtypes = [ctypes.c_char_p, ctypes.c_int, _c_int_p, _c_int_p, _c_int_p, ctypes.c_int]
    load.restype = ctypes.c_void_p
    free.argtypes = [ctypes.c_void_p]
    free.restype = None
    reason.argtypes = []
    reason.restype = ctypes.c_char_p
    return info, load, free, reason


_STBI = _stbi()


class MediaChunk:
    """The projector's input for one image piece: an owned ``mtmd_input_chunk`` until it is encoded
    (or no longer needed), then the rows it encoded to while its positions are being decoded."""

    def __init__(self, ptr: int, key: bytes, n_tokens: int, non_causal: bool):
        self._ptr: int | None = ptr
        self.key = key  # the image's sha256 and the piece's index: the embedding cache's key
        self.n_tokens = n_tokens
        self.non_causal = non_causal  # decoded with causal attention off (Gemma 3), alone in its batch
        self.rows: np.ndarray | None = None

    @property
    def ptr(self) -> int | None:
        return self._ptr

    def free(self) -> None:
        """Drop the native chunk (the rows, if any, stay)."""
        ptr, self._ptr = self._ptr, None
        if ptr:
            M.mtmd_input_chunk_free(ptr)

    def __del__(self) -> None:  # a safety net: sequences free their chunks explicitly
        self.free()


class Projector:
    """A loaded projector for ``model``; ``pieces`` may run on any thread, ``encode`` on the engine's."""

    def __init__(self, path: str, model: Model, *, n_threads: int):
        if not Path(path).is_file():
            raise LoadError(f"projector file not found: {path}")
        params = M.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.n_threads = max(1, n_threads)
        M.mtmd_helper_log_set(native_log_callback(), None)  # also sets libmtmd's and clip's own log
        reset_native_error()
        self.path = path
        ptr = M.mtmd_init_from_file(path.encode(), model.ptr, params)
        if not ptr:
            raise LoadError(f"failed to load the projector {path}: {native_error() or 'not a projector GGUF'}")
        self._ptr: Any = ptr  # an mtmd_context pointer (None once closed)
        self.n_embd = model.n_embd_inp
        if not M.mtmd_support_vision(ptr):
            self.close()
            raise LoadError(f"the projector {path} has no vision encoder")
        if M.mtmd_decode_use_mrope(ptr):
            self.close()
            raise LoadError(f"the projector {path} is for a model with M-RoPE positions (Qwen2-VL and later), "
                            "which llmhost does not support yet")
        self._marker = M.mtmd_default_marker()  # an image alone, tokenized: its pieces
        self._tokenize_lock = threading.Lock()  # requests are prepared on several threads

    def close(self) -> None:
        ptr, self._ptr = self._ptr, None
        if ptr:
            M.mtmd_free(ptr)

    # --- any thread ---------------------------------------------------------------------------------

    def pieces(self, image: ImageData) -> list[np.ndarray | MediaChunk]:
        """The image as the prompt takes it: text-token arrays and ``MediaChunk``s, in order.
        BadRequest (naming the image) when it cannot be decoded."""
        bitmap = self._bitmap(image)
        chunks = M.mtmd_input_chunks_init()
        try:
            text = M.mtmd_input_text(self._marker, len(self._marker), False, True)
            with self._tokenize_lock:
                rc = M.mtmd_tokenize(self._ptr, chunks, ctypes.byref(text),
                                     (M.mtmd_bitmap_p_ctypes * 1)(bitmap), 1)
            if rc != 0:
                raise BadRequest(f"image {image.index} could not be prepared for the model "
                                 f"(libmtmd status {rc})")
            return [self._piece(M.mtmd_input_chunks_get(chunks, i), image, i)
                    for i in range(M.mtmd_input_chunks_size(chunks))]
        finally:
            M.mtmd_input_chunks_free(chunks)
            M.mtmd_bitmap_free(bitmap)

    def _piece(self, chunk: int, image: ImageData, i: int) -> np.ndarray | MediaChunk:
        kind = M.mtmd_input_chunk_get_type(chunk)
        if kind == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t()
            tokens = M.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
            return np.ctypeslib.as_array(tokens, shape=(n.value,)).astype(np.int32) if n.value else \
                np.zeros(0, np.int32)
        if kind != M.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            raise BadRequest(f"image {image.index}: the projector made a chunk of type {kind}")
        n_tokens = M.mtmd_input_chunk_get_n_tokens(chunk)
        non_causal = bool(M.mtmd_decode_use_non_causal(self._ptr, chunk))
        owned = M.mtmd_input_chunk_copy(chunk)
        return MediaChunk(owned, image.digest + i.to_bytes(2, "little"), n_tokens, non_causal)

    def _bitmap(self, image: ImageData) -> int:
        if _STBI is None:  # the format was checked: stb decodes it or fails without ffprobe for these
            buf = (ctypes.c_uint8 * len(image.data)).from_buffer_copy(image.data)
            bitmap = M.mtmd_helper_bitmap_init_from_buf(self._ptr, buf, len(image.data), False)
            if not bitmap:
                raise BadRequest(f"image {image.index} ({image.format}) could not be decoded")
            return bitmap
        info, load, free, reason = _STBI
        x, y, comp = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        if not info(image.data, len(image.data), ctypes.byref(x), ctypes.byref(y), ctypes.byref(comp)):
            raise BadRequest(f"image {image.index} ({image.format}) could not be decoded: {_reason(reason)}")
        if x.value * y.value > MAX_IMAGE_PIXELS:
            raise BadRequest(f"image {image.index} is {x.value}×{y.value} pixels, more than the limit of "
                             f"{MAX_IMAGE_PIXELS} pixels")
        pixels = load(image.data, len(image.data), ctypes.byref(x), ctypes.byref(y), ctypes.byref(comp), 3)
        if not pixels:
            raise BadRequest(f"image {image.index} ({image.format}) could not be decoded: {_reason(reason)}")
        try:
            bitmap = M.mtmd_bitmap_init(x.value, y.value, ctypes.cast(pixels, ctypes.POINTER(ctypes.c_uint8)))
        finally:
            free(pixels)
        M.mtmd_bitmap_set_id(bitmap, image.digest.hex().encode())
        return bitmap

    # --- engine thread ------------------------------------------------------------------------------

    def encode(self, chunk: MediaChunk) -> np.ndarray:
        """The chunk's embedding rows (n_tokens × the text model's input width, a copy)."""
        if chunk.ptr is None:
            raise RuntimeError("the image chunk was already freed")
        rc = M.mtmd_encode_chunk(self._ptr, chunk.ptr)
        if rc != 0:
            raise RuntimeError(f"the projector failed to encode an image (status {rc}): {native_error()}")
        out = M.mtmd_get_output_embd(self._ptr)
        return np.ctypeslib.as_array(out, shape=(chunk.n_tokens, self.n_embd)).copy()


def _reason(reason) -> str:
    text = reason()
    return text.decode(errors="replace") if text else "unknown error"


class ImageEncoder:
    """Rows for image positions, from the cache or the projector (engine thread only)."""

    def __init__(self, projector: Projector, cache_bytes: int | None = None):
        self.projector = projector
        self.cache = EmbeddingCache() if cache_bytes is None else EmbeddingCache(cache_bytes)
        self.encoded = 0  # mtmd encodes run
        self.cache_hits = 0  # images whose rows came from the cache

    def rows(self, chunk: MediaChunk) -> np.ndarray:
        """The chunk's rows; kept on the chunk until its positions are decoded (``chunk.rows``)."""
        if chunk.rows is None:
            rows = self.cache.get(chunk.key)
            if rows is not None:
                self.cache_hits += 1
            else:
                rows = self.projector.encode(chunk)
                self.encoded += 1
                self.cache.put(chunk.key, rows)
            chunk.rows = rows
            chunk.free()
        return chunk.rows
