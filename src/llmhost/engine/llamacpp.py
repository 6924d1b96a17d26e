"""Thin typed wrapper over llama-cpp-python's low-level ctypes API: the only module importing llama_cpp
(but for ``engine.vision``, the multimodal projector's).

Everything above this module works with plain Python/numpy values: ``Model`` (weights, vocabulary,
tokenizer, metadata), ``Context`` (the KV cache and ``llama_decode``), ``Batch`` (a ``llama_batch``
whose arrays are numpy buffers, so a 2,000-token prefill is a few slice assignments instead of
thousands of ctypes element writes; of token ids, or of embedding rows for images) and
``SamplerChain`` (a native ``llama_sampler`` chain).

Not thread-safe by itself: the engine thread owns the Context; the Model's read-only calls
(tokenize, pieces, sampler construction) are safe from other threads.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as L
import numpy as np
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from llmhost.api.options import KV_CACHE_TYPES
from llmhost.engine.cpu import repack_enabled

__all__ = [
    "JSON_GBNF",
    "KV_TYPES",
    "POOLING_MEAN",
    "POOLING_RANK",
    "POOLING_UNSPECIFIED",
    "Batch",
    "Context",
    "DecodeError",
    "LoadError",
    "Model",
    "Sampler",
    "SamplerChain",
    "init_backend",
    "json_schema_to_gbnf",
]

log = logging.getLogger("llmhost.llama")

# ggml_log_level (ggml.h) -> logging levels; CONT (5) continues the previous line's level.
# (llama_cpp's own _logger maps these wrongly, so its callback is replaced in init_backend.)
_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp picks a random seed
POOLING_UNSPECIFIED = L.LLAMA_POOLING_TYPE_UNSPECIFIED  # the model's own pooling
POOLING_MEAN = L.LLAMA_POOLING_TYPE_MEAN
POOLING_RANK = L.LLAMA_POOLING_TYPE_RANK  # a classifier head: one relevance score per sequence (rerankers)
# KV cache element types by option name (api.options.KV_CACHE_TYPES); the same type for K and V.
KV_TYPES = {"f16": L.GGML_TYPE_F16, "q8_0": L.GGML_TYPE_Q8_0, "q4_0": L.GGML_TYPE_Q4_0}
assert set(KV_TYPES) == set(KV_CACHE_TYPES), "KV_TYPES must mirror api.options.KV_CACHE_TYPES"
_FLASH_ATTENTION = {"auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                    "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED}  # api.option_table.FLASH_ATTENTION_MODES
# A llama.cpp struct we fill ourselves (llama_batch, llama_token_data_array). llama_cpp types its
# pointer fields as ctypes arrays, but we store pointers into numpy buffers there (or None), and ctypes
# reads its int fields back as Python ints: the declared field types would only mislead.
_CStruct = Any


class LoadError(Exception):
    """The model or its context could not be created; the message is meant for the user."""


class DecodeError(Exception):
    """``llama_decode`` failed; ``code`` is its return value (1: no KV slot, 2: aborted, <0: error)."""

    def __init__(self, code: int):
        super().__init__(f"llama_decode failed with status {code}")
        self.code = code


class _LogRouter:
    """Routes llama.cpp's log lines to Python logging and remembers the first error line since the
    last ``reset()``.

    That line (the root cause, e.g. "bad GGUF version") is what a failed load reports, because
    ``llama_model_load_from_file`` itself only returns NULL; later lines only repeat "failed".
    """

    def __init__(self) -> None:
        self.first_error = ""
        self._level = logging.INFO
        self._line = ""
        self.callback = L.llama_log_callback(self._on_log)  # keep a reference: C holds the pointer

    def _on_log(self, level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        if level != 5:
            self._level = _LEVELS.get(level, logging.INFO)
        if self._level >= logging.ERROR or log.isEnabledFor(self._level):
            self._line += text.decode("utf-8", errors="replace")
            if self._line.endswith("\n"):
                line, self._line = self._line.strip(), ""
                if self._level >= logging.ERROR and line and not self.first_error:
                    self.first_error = line
                log.log(self._level, "%s", line)


_router = _LogRouter()
_backend_lock = threading.Lock()
_backend_ready = False


def native_log_callback():
    """The callback that routes llama.cpp's log to Python logging (libmtmd takes it too)."""
    return _router.callback


def reset_native_error() -> None:
    """Forget the last error line, before a call whose failure ``native_error`` should explain."""
    _router.first_error = ""


def native_error() -> str:
    """The first error line llama.cpp (or libmtmd) logged since ``reset_native_error``, on one line."""
    return " ".join(_router.first_error.split())


def init_backend() -> None:
    """Initialise llama.cpp once per process and take over its logging."""
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            L.llama_log_set(_router.callback, ctypes.c_void_p(0))
            L.llama_backend_init()
            _backend_ready = True


# The tokens llama.cpp's tokenizer looks for in a text before tokenizing the rest (its special-token
# partition), and those of them that only that partition produces (unknown tokens also come out of
# some tokenizers' byte fallback, so they cannot mark where a partition cut the text).
_SPLIT_ATTRS = L.LLAMA_TOKEN_ATTR_CONTROL | L.LLAMA_TOKEN_ATTR_USER_DEFINED | L.LLAMA_TOKEN_ATTR_UNKNOWN
_CUT_ATTRS = L.LLAMA_TOKEN_ATTR_CONTROL | L.LLAMA_TOKEN_ATTR_USER_DEFINED
# A bare prototype: the binding's wrapper costs more than the call, once per vocabulary entry.
_vocab_attr = L._lib["llama_vocab_get_attr"]
_vocab_attr.argtypes = [ctypes.c_void_p, ctypes.c_int32]
_vocab_attr.restype = ctypes.c_int


@dataclass(frozen=True)
class SpecialTokens:
    """``cut[t]``: token t is a control or user-defined token, which a text holding its text is
    always split at; ``longest``: bytes in the longest text the partition looks for."""

    cut: np.ndarray
    longest: int


class Model:
    """Loaded weights plus vocabulary; tokenize/detokenize helpers with a piece cache."""

    def __init__(self, path: str | os.PathLike, *, n_gpu_layers: int = 0, main_gpu: int = 0,
                 use_mmap: bool = True, cpu_repack: bool | None = None, devices: Sequence[int] = (),
                 tensor_split: Sequence[float] | None = None):
        """``cpu_repack``: let llama.cpp repack weights for its faster CPU kernels (extra buffer
        types); None decides by the CPU (``engine.cpu``: off where AMX would crash).
        ``devices`` (``ggml_backend_dev_t`` addresses, e.g. RPC workers' from ``engine.rpc``) replace
        the local GPUs as the devices layers are offloaded to, ``tensor_split`` giving each one's share."""
        init_backend()
        self.path = str(path)
        if not Path(self.path).is_file():
            raise LoadError(f"model file not found: {self.path}")
        params = L.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.main_gpu = main_gpu  # used by llama.cpp's single-GPU and row split modes; CPU builds ignore it
        params.use_mmap = use_mmap
        self.cpu_repack = repack_enabled("auto") if cpu_repack is None else cpu_repack
        params.use_extra_bufts = self.cpu_repack
        # Both are read during the load only (llama.cpp copies them): they need to live until it returns.
        device_list = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
        split = (ctypes.c_float * L.llama_max_devices())(*(tensor_split or ()))
        if devices:
            params.devices = ctypes.cast(device_list, ctypes.c_void_p).value
            if tensor_split:
                params.tensor_split = ctypes.cast(split, ctypes.POINTER(ctypes.c_float))
        _router.first_error = ""
        self._ptr = L.llama_model_load_from_file(self.path.encode(), params)
        if not self._ptr:
            detail = _router.first_error or "unsupported or corrupt GGUF file"
            raise LoadError(f"failed to load model {self.path}: {detail}")
        self._vocab = L.llama_model_get_vocab(self._ptr)
        self.n_vocab = L.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train = L.llama_model_n_ctx_train(self._ptr)
        self.n_swa = max(0, L.llama_model_n_swa(self._ptr))  # sliding-window attention's window (0: none)
        self.n_embd = L.llama_model_n_embd(self._ptr)
        self.n_embd_inp = L.llama_model_n_embd_inp(self._ptr)  # the width of input embedding rows (images)
        self.head_size_k = self._key_length()
        self.add_bos = bool(L.llama_vocab_get_add_bos(self._vocab))
        self.bos = L.llama_vocab_bos(self._vocab)
        self.eos = L.llama_vocab_eos(self._vocab)
        self.sep = L.llama_vocab_sep(self._vocab)
        self.add_eos = bool(L.llama_vocab_get_add_eos(self._vocab))
        self.add_sep = bool(L.llama_vocab_get_add_sep(self._vocab))
        self.size_bytes = L.llama_model_size(self._ptr)
        self.vocab_type = int(L.llama_vocab_type(self._vocab))
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}
        self._specials: SpecialTokens | None = None
        self._specials_lock = threading.Lock()

    @property
    def ptr(self):
        return self._ptr

    @property
    def vocab(self):
        return self._vocab

    def close(self) -> None:
        if self._ptr:
            L.llama_model_free(self._ptr)
            self._ptr = None

    # --- metadata -------------------------------------------------------------------------------

    def _key_length(self) -> int:
        """Values per attention head in K (``<arch>.attention.key_length``, else n_embd / n_head)."""
        arch = self.meta("general.architecture") or ""
        explicit = self.meta(f"{arch}.attention.key_length")
        if explicit and explicit.isdigit():
            return int(explicit)
        heads = L.llama_model_n_head(self._ptr)
        return self.n_embd // heads if heads > 0 else 0

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as a string, or None when absent."""
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = L.llama_model_meta_val_str(self._ptr, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def chat_template(self, name: str | None = None) -> str | None:
        """The GGUF's default Jinja chat template (``tokenizer.chat_template``), or the one named
        ``name`` (``tokenizer.chat_template.<name>``, e.g. a reranker's "rerank" prompt), if any."""
        raw = L.llama_model_chat_template(self._ptr, name.encode() if name else None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def token_text(self, token: int) -> str:
        """The vocabulary text of a token (e.g. "<|im_end|>"), empty for an invalid id."""
        if token < 0 or token >= self.n_vocab:
            return ""
        raw = L.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self._vocab, token))

    # --- text <-> tokens --------------------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> np.ndarray:
        """Tokens of ``text`` as an int32 array.

        The buffer is sized from the text (at most one token per byte, plus BOS/EOS), not from the
        training context, so short calls stay cheap.
        """
        data = text.encode("utf-8")
        capacity = len(data) + 8
        while True:
            out = np.empty(capacity, dtype=np.int32)
            ptr = out.ctypes.data_as(ctypes.POINTER(L.llama_token))
            n = L.llama_tokenize(self._vocab, data, len(data), ptr, capacity, add_special, parse_special)
            if n >= 0:
                return out[:n].copy()
            capacity = -n

    def piece(self, token: int) -> bytes:
        """Bytes of one token as generated text (special tokens render as nothing), cached."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._token_to_piece(token)
            self._pieces[token] = cached
        return cached

    def special_piece(self, token: int) -> bytes:
        """Bytes of one token with control tokens rendered as their text (``[TOOL_CALLS]``,
        ``<|python_tag|>``): what output parsers need to see the markers a model emits."""
        cached = self._special_pieces.get(token)
        if cached is None:
            cached = self._token_to_piece(token, special=True)
            self._special_pieces[token] = cached
        return cached

    def _token_to_piece(self, token: int, special: bool = False) -> bytes:
        size = 32
        while True:
            buf = ctypes.create_string_buffer(size)
            n = L.llama_token_to_piece(self._vocab, token, buf, size, 0, special)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def special_tokens(self) -> SpecialTokens:
        """What llama.cpp's tokenizer splits a text at before tokenizing its pieces (computed once:
        a pass over the vocabulary, ~80 ms for 262k tokens)."""
        with self._specials_lock:  # the runner starts it on a thread while the context is created
            if self._specials is None:
                self._specials = self._scan_specials()
            return self._specials

    def _scan_specials(self) -> SpecialTokens:
        attrs = np.fromiter((_vocab_attr(self._vocab, t) for t in range(self.n_vocab)), np.int32, self.n_vocab)
        split = (attrs & _SPLIT_ATTRS) != 0
        longest = max((len(L.llama_vocab_get_text(self._vocab, int(t)) or b"") for t in np.flatnonzero(split)),
                      default=0)
        return SpecialTokens(cut=(attrs & _CUT_ATTRS) != 0, longest=longest)

    def fim_tokens(self) -> tuple[int, int, int] | None:
        """The fill-in-middle prefix, suffix and middle tokens, or None when the vocabulary lacks them."""
        ids = (L.llama_vocab_fim_pre(self._vocab), L.llama_vocab_fim_suf(self._vocab),
               L.llama_vocab_fim_mid(self._vocab))
        return ids if all(0 <= t < self.n_vocab for t in ids) else None

    def detokenize(self, tokens) -> str:
        """Text of a token sequence (special tokens rendered as nothing)."""
        return b"".join(self.piece(int(t)) for t in tokens).decode("utf-8", errors="replace")


class Context:
    """A llama_context: the KV cache of ``n_ctx`` cells shared by ``n_seq_max`` sequence ids.

    ``n_threads`` compute threads run multi-token ubatches (prefill, several sequences decoding);
    ``n_threads_decode`` (default the same) run single-token ones. ``kv_cache_type`` (a name in
    ``KV_TYPES``) is the element type of K and V; llama.cpp reads a quantized V only with flash
    attention, so that is switched on for one (as Ollama does) instead of being left to "auto".
    ``flash_attention``: "auto" (llama.cpp decides), "on" or "off".
    """

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int,
        n_seq_max: int,
        n_batch: int,
        n_ubatch: int | None = None,
        n_threads: int | None = None,
        n_threads_decode: int | None = None,
        kv_unified: bool = True,
        embeddings: bool = False,
        pooling: int | None = None,
        kv_cache_type: str = "f16",
        flash_attention: str = "auto",
    ):
        params = L.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_seq_max = n_seq_max
        params.n_batch = n_batch
        params.n_ubatch = self.n_ubatch = n_ubatch or min(n_batch, 512)
        params.kv_unified = kv_unified
        params.embeddings = embeddings
        if pooling is not None:
            params.pooling_type = pooling
        if n_threads:
            params.n_threads = params.n_threads_batch = n_threads
        if n_threads_decode:
            params.n_threads = n_threads_decode  # llama.cpp uses it for one-token ubatches
        params.type_k = params.type_v = KV_TYPES[kv_cache_type]
        if kv_cache_type != "f16" and flash_attention == "off":
            raise LoadError(f"a {kv_cache_type} KV cache needs flash attention, which is turned off")
        params.flash_attn_type = _FLASH_ATTENTION[flash_attention]
        if kv_cache_type != "f16":
            params.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED
        _router.first_error = ""
        self._ptr = L.llama_init_from_model(model.ptr, params)
        if not self._ptr:
            detail = _router.first_error or "out of memory?"
            if kv_cache_type != "f16":
                raise LoadError(f"failed to create a context of {n_ctx} tokens with a {kv_cache_type} KV cache: "
                                f"{detail} (a quantized KV cache needs flash attention and a head size divisible by 32; "
                                "f16 needs neither)")
            raise LoadError(f"failed to create a context of {n_ctx} tokens: {detail}")
        self.kv_cache_type = kv_cache_type
        self.flash_attention = flash_attention
        # llama.cpp (as llama-cpp-python 0.3.36 vendors it) rotates a quantized K only when its heads
        # hold a multiple of 64 values, and segfaults shifting one it did not rotate
        # (tests/engine/test_kv_types.py): such a cache counts as one that cannot shift.
        self._shiftable = kv_cache_type == "f16" or model.head_size_k % 64 == 0
        self._mem = L.llama_get_memory(self._ptr)
        # A recurrent (or hybrid) model's state cannot lose its last positions alone, which rejected
        # speculative drafts need (engine.speculation).
        self.can_trim = not (L.llama_model_is_recurrent(model.ptr) or L.llama_model_is_hybrid(model.ptr))
        self.n_ctx = L.llama_n_ctx(self._ptr)
        self.n_batch = n_batch
        self.n_seq_max = n_seq_max
        self._row_type = ctypes.c_float * model.n_vocab

    @property
    def ptr(self):
        return self._ptr

    def close(self) -> None:
        if self._ptr:
            L.llama_free(self._ptr)
            self._ptr = None

    def decode(self, batch: Batch) -> None:
        """Run the model over the batch; raises DecodeError on a non-zero status."""
        rc = L.llama_decode(self._ptr, batch.struct)
        if rc != 0:
            raise DecodeError(rc)

    def set_causal(self, causal: bool) -> None:
        """Causal attention on (the default) or off (for an image a projector decodes non-causally;
        llama.cpp then needs the whole batch in one ubatch)."""
        L.llama_set_causal_attn(self._ptr, causal)

    def logits(self, row: int) -> np.ndarray:
        """A zero-copy float32 view of one output row's logits (n_vocab), valid until the next
        decode; a sampler with penalties changes it in place (``Sampler.sample``)."""
        address = _logits_ith(self._ptr, row)
        if not address:
            raise ValueError(f"batch row {row} has no logits")
        return np.frombuffer(self._row_type.from_address(address), dtype=np.float32)

    def embeddings_seq(self, seq_id: int, n_embd: int) -> np.ndarray | None:
        """The pooled embedding of a sequence (a copy), or None without pooling."""
        ptr = L.llama_get_embeddings_seq(self._ptr, seq_id)
        if not ptr:
            return None
        return np.ctypeslib.as_array(ptr, shape=(n_embd,)).copy()

    # --- KV memory (positions are half-open [p0, p1); -1 means "to the end") ---------------------

    def seq_rm(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        """Drop positions of a sequence; False when the cache cannot remove part of a sequence."""
        return bool(L.llama_memory_seq_rm(self._mem, seq_id, p0, p1))

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        """Make ``dst`` share ``src``'s cells in [p0, p1) (unified KV: metadata only)."""
        L.llama_memory_seq_cp(self._mem, src, dst, p0, p1)

    def seq_add(self, seq_id: int, p0: int, p1: int, delta: int) -> None:
        """Move positions [p0, p1) of a sequence by ``delta`` (RoPE is re-applied at the next decode)."""
        L.llama_memory_seq_add(self._mem, seq_id, p0, p1, delta)

    def can_shift(self) -> bool:
        """Whether positions can be moved (false for M-RoPE, some recurrent caches, and a quantized
        cache whose heads llama.cpp does not rotate, see above)."""
        return self._shiftable and bool(L.llama_memory_can_shift(self._mem))

    def seq_pos_min(self, seq_id: int) -> int:
        return L.llama_memory_seq_pos_min(self._mem, seq_id)

    def seq_pos_max(self, seq_id: int) -> int:
        return L.llama_memory_seq_pos_max(self._mem, seq_id)

    def clear(self) -> None:
        L.llama_memory_clear(self._mem, True)

    # --- per-sequence state (swap to host memory) -------------------------------------------------

    def state_seq_size(self, seq_id: int) -> int:
        """Bytes ``state_seq_get`` would copy (an upper bound, computed without copying)."""
        return int(L.llama_state_seq_get_size(self._ptr, seq_id))

    def state_seq_get(self, seq_id: int) -> np.ndarray:
        """A host copy of one sequence's KV cells (positions and K/V rows)."""
        size = self.state_seq_size(seq_id)
        buf = np.empty(size, dtype=np.uint8)
        written = L.llama_state_seq_get_data(self._ptr, buf.ctypes.data_as(_U8P), size, seq_id)
        return buf[:written]

    def state_seq_set(self, seq_id: int, data: np.ndarray) -> bool:
        """Restore a sequence saved by ``state_seq_get`` into free cells; False when they do not fit."""
        return L.llama_state_seq_set_data(self._ptr, data.ctypes.data_as(_U8P), data.nbytes, seq_id) > 0


class Batch:
    """A ``llama_batch`` backed by numpy arrays (one sequence id per row): of token ids, or with
    ``n_embd`` of embedding rows (an image's; llama.cpp takes one kind per decode).

    The struct's pointers point into arrays this object owns, so it must never be passed to
    ``llama_batch_free``; it lives as long as this object.
    """

    def __init__(self, capacity: int, n_embd: int = 0):
        self.capacity = capacity
        self.tokens = np.zeros(0 if n_embd else capacity, dtype=np.int32)
        self.embd = np.zeros((capacity, n_embd), dtype=np.float32) if n_embd else None
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        self._n_seq_id = np.ones(capacity, dtype=np.int32)
        # seq_id is an array of pointers to per-row id arrays: point row i at self.seq[i].
        self._seq_ptrs = (self.seq.ctypes.data + 4 * np.arange(capacity, dtype=np.uint64)).astype(np.uint64)
        s: _CStruct = L.llama_batch()
        s.n_tokens = 0
        if self.embd is None:
            s.token = self.tokens.ctypes.data_as(ctypes.POINTER(L.llama_token))
            s.embd = None
        else:
            s.token = None
            s.embd = self.embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        s.pos = self.pos.ctypes.data_as(ctypes.POINTER(L.llama_pos))
        s.n_seq_id = self._n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        s.seq_id = ctypes.cast(self._seq_ptrs.ctypes.data, ctypes.POINTER(ctypes.POINTER(L.llama_seq_id)))
        s.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.struct = s
        self.n_tokens = 0

    def clear(self) -> None:
        self.n_tokens = 0
        self.struct.n_tokens = 0

    def add(self, tokens: np.ndarray, start_pos: int, seq_id: int, *, logits: str = "last") -> int:
        """Append ``tokens`` (ids, or embedding rows) of one sequence at positions ``start_pos…``;
        returns the last row index.

        ``logits``: "last" (only the final row is an output), "all" or "none".
        """
        n = len(tokens)
        i, j = self.n_tokens, self.n_tokens + n
        if j > self.capacity:
            raise ValueError(f"batch overflow: {j} > {self.capacity}")
        if self.embd is None:
            self.tokens[i:j] = tokens
        else:
            self.embd[i:j] = tokens
        self.pos[i:j] = np.arange(start_pos, start_pos + n, dtype=np.int32)
        self.seq[i:j] = seq_id
        self.logits[i:j] = 1 if logits == "all" else 0
        if logits == "last" and n:
            self.logits[j - 1] = 1
        self.n_tokens = j
        self.struct.n_tokens = j
        return j - 1


_U8P = ctypes.POINTER(ctypes.c_uint8)
# A private prototype returning a plain address: the binding's own returns a ctypes pointer object,
# and turning that into a numpy view costs more than the sampling it feeds.
_logits_ith = L._lib["llama_get_logits_ith"]
_logits_ith.argtypes = [L.llama_context_p_ctypes, ctypes.c_int32]
_logits_ith.restype = ctypes.c_void_p
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class _Candidates:
    """A reusable ``llama_token_data_array`` over the whole vocabulary, backed by numpy."""

    def __init__(self, n_vocab: int):
        self.n_vocab = n_vocab
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._data = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._logits_type = ctypes.c_float * n_vocab
        self.array: _CStruct = L.llama_token_data_array(
            self._data.ctypes.data_as(L.llama_token_data_p), n_vocab, -1, False
        )
        self.ref = ctypes.byref(self.array)
        # One-token array for asking the grammar about a single candidate.
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        self.one: _CStruct = L.llama_token_data_array(self._one.ctypes.data_as(L.llama_token_data_p), 1, -1, False)
        self.one_ref = ctypes.byref(self.one)

    def load(self, logits_addr: int) -> None:
        logits = np.frombuffer(self._logits_type.from_address(logits_addr), dtype=np.float32)  # type: ignore[call-overload]  # numpy's pre-3.12 stubs omit ctypes arrays (buffers)
        self._data["id"] = self._ids
        self._data["logit"] = logits
        self._data["p"] = 0.0
        a = self.array
        a.data = self._data.ctypes.data_as(L.llama_token_data_p)  # a sampler may have re-pointed it
        a.size, a.selected, a.sorted = self.n_vocab, -1, False

    def selected(self) -> int:
        a = self.array
        return a.data[a.selected].id

    def load_one(self, token: int) -> None:
        self._one[0] = (token, 1.0, 0.0)
        o = self.one
        o.data = self._one.ctypes.data_as(L.llama_token_data_p)
        o.size, o.selected, o.sorted = 1, -1, False

    def one_allowed(self) -> bool:
        return bool(np.isfinite(self._one["logit"][0]))


class SamplerChain:
    """A native sampler chain; ``sample`` picks the next token from a batch row's logits and
    accepts it (updating penalty and grammar state)."""

    def __init__(self) -> None:
        params = L.llama_sampler_chain_default_params()
        params.no_perf = True
        self._ptr = L.llama_sampler_chain_init(params)

    def _add(self, sampler) -> SamplerChain:
        if not sampler:
            raise ValueError("llama.cpp refused the sampler")
        L.llama_sampler_chain_add(self._ptr, sampler)  # the chain now owns it
        return self

    def add_penalties(self, n_vocab: int, last_n: int, repeat: float, freq: float, present: float):
        return self._add(L.llama_sampler_init_penalties(n_vocab, last_n, repeat, freq, present))

    def add_grammar(self, model: Model, gbnf: str, root: str = "root"):
        """Constrain output to a GBNF grammar; ValueError when llama.cpp cannot parse it."""
        _router.first_error = ""
        sampler = L.llama_sampler_init_grammar(model.vocab, gbnf.encode(), root.encode())
        if not sampler:
            raise ValueError(_router.first_error or "invalid grammar")
        return self._add(sampler)

    def add_top_k(self, k: int):
        return self._add(L.llama_sampler_init_top_k(k))

    def add_typical(self, p: float):
        return self._add(L.llama_sampler_init_typical(p, 1))

    def add_top_p(self, p: float):
        return self._add(L.llama_sampler_init_top_p(p, 1))

    def add_min_p(self, p: float):
        return self._add(L.llama_sampler_init_min_p(p, 1))

    def add_temperature(self, t: float):
        return self._add(L.llama_sampler_init_temp(t))

    def add_dist(self, seed: int):
        return self._add(L.llama_sampler_init_dist(_seed(seed)))

    def add_logit_bias(self, n_vocab: int, biases: list[tuple[int, float]]):
        """Add each ``bias`` to its ``token``'s logit (llama.cpp copies the list)."""
        entries = (L.llama_logit_bias * len(biases))(*(L.llama_logit_bias(t, b) for t, b in biases))
        return self._add(L.llama_sampler_init_logit_bias(n_vocab, len(biases), entries))

    def add_greedy(self):
        return self._add(L.llama_sampler_init_greedy())

    def add_mirostat(self, n_vocab: int, seed: int, tau: float, eta: float):
        return self._add(L.llama_sampler_init_mirostat(n_vocab, _seed(seed), tau, eta, 100))

    def add_mirostat_v2(self, seed: int, tau: float, eta: float):
        return self._add(L.llama_sampler_init_mirostat_v2(_seed(seed), tau, eta))

    @property
    def ptr(self):
        return self._ptr

    def sample(self, ctx: Context, row: int) -> int:
        return L.llama_sampler_sample(self._ptr, ctx.ptr, row)

    def close(self) -> None:
        if self._ptr:
            L.llama_sampler_free(self._ptr)
            self._ptr = None

    def __del__(self) -> None:  # a safety net; the engine frees chains explicitly when a sequence ends
        self.close()


class Sampler:
    """A sequence's sampler: repetition penalties, a native chain, and an optional grammar.

    The penalties (``engine.penalties``) are applied to the row's logits in place before the chain
    runs. Without a grammar, the chain is then one native call. With one, checking the grammar
    over the whole vocabulary on every token is what made constrained output slow, so (like
    llama-server) the chain picks a token first and the grammar only checks that one; only when
    it rejects it is the chain run again over the grammar-filtered vocabulary.
    """

    def __init__(self, chain: SamplerChain, grammar: SamplerChain | None = None, *, n_vocab: int = 0,
                 penalties=None, greedy: bool = False):
        """``greedy``: the chain only picks the most likely token, which is then taken here with
        numpy (~4 µs) instead of the chain's pass over a fresh copy of the vocabulary (~50 µs)."""
        self.chain = chain
        self.grammar = grammar
        self.penalties = penalties  # engine.penalties.Penalties, or None
        self._candidates = _Candidates(n_vocab) if grammar is not None else None
        self._row_type = ctypes.c_float * n_vocab
        self._argmax = greedy and grammar is None

    def sample(self, ctx: Context, row: int) -> int:
        """Pick and accept the next token from a batch row's logits."""
        token = self._pick(ctx, row)
        if self.penalties is not None:
            self.penalties.accept(token)
        return token

    def _pick(self, ctx: Context, row: int) -> int:
        if self.penalties is not None or self._argmax:
            logits = self._row_type.from_address(_logits_ith(ctx.ptr, row))
            if self.penalties is not None:
                self.penalties.apply(logits)
            if self._argmax:  # the first of equal maxima, as llama.cpp's greedy sampler picks
                return int(np.frombuffer(logits, dtype=np.float32).argmax())  # type: ignore[call-overload]  # numpy's pre-3.12 stubs omit ctypes arrays (buffers)
        if self.grammar is None:
            return L.llama_sampler_sample(self.chain.ptr, ctx.ptr, row)
        cand, chain, grammar = self._candidates, self.chain.ptr, self.grammar.ptr
        assert cand is not None  # made with the grammar
        logits = _logits_ith(ctx.ptr, row)
        cand.load(logits)
        L.llama_sampler_apply(chain, cand.ref)
        token = cand.selected()
        cand.load_one(token)
        L.llama_sampler_apply(grammar, cand.one_ref)
        if not cand.one_allowed():
            cand.load(logits)
            L.llama_sampler_apply(grammar, cand.ref)
            L.llama_sampler_apply(chain, cand.ref)
            token = cand.selected()
        L.llama_sampler_accept(grammar, token)
        L.llama_sampler_accept(chain, token)
        return token

    def accept_history(self, tokens) -> None:
        """Feed tokens that were not sampled (the prompt) into the penalty history (ours, or the
        chain's when it holds llama.cpp's own penalties sampler)."""
        for token in tokens:
            if self.penalties is not None:
                self.penalties.accept(int(token))
            else:
                L.llama_sampler_accept(self.chain.ptr, int(token))

    def close(self) -> None:
        self.chain.close()
        if self.grammar is not None:
            self.grammar.close()


def _seed(seed: int) -> int:
    return _DEFAULT_SEED if seed < 0 else seed & 0xFFFFFFFF
