"""What a GGUF file says about its model: architecture, size, quantization, shapes, chat template,
fill-in-middle tokens.

Parsing is done by the ``gguf`` package's ``GGUFReader``. Crafted GGUF files have crashed Ollama
(4-byte files, alignment 0, tensors past EOF, huge arrays: CVE-2024-39720, CVE-2025-0317,
CVE-2026-7482), so the reader is wrapped: a cheap header check first, every read bounds-checked
against the file size, arrays capped, tensor extents checked, and every failure reported as
InvalidModelFile. No reference to the reader's memory map survives a call, so the file is closed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, LlamaFileType

from llmhost.errors import InvalidModelFile

MAX_ARRAY_ITEMS = 1 << 22  # largest real vocabularies are ~260k tokens
MAX_TOTAL_ITEMS = 1 << 23  # all arrays together; each item costs a Python object while parsing
MAX_TENSOR_DIMS = 4  # GGML_MAX_DIMS
_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor count, metadata count
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset
_SHORT_ARRAY = 5  # Ollama's /api/show hides arrays longer than this unless verbose


@dataclass(frozen=True)
class GGUFInfo:
    """Metadata of one GGUF file, with per-layer tensor sizes for memory estimates.

    ``metadata`` holds every key/value pair of the file as Python values (arrays as tuples);
    treat it as read-only: results are cached per file.
    """

    architecture: str
    parameter_count: int
    file_type: int | None
    quantization: str
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    key_length: int | None
    value_length: int | None
    vocab_size: int | None
    chat_template: str | None
    metadata: Mapping[str, Any]
    layer_bytes: Mapping[int, int]
    output_bytes: int
    total_tensor_bytes: int
    tensor_count: int
    file_size: int
    fim_tokens: tuple[int, int, int] | None = None  # fill-in-middle prefix, suffix, middle token ids

    @property
    def parameter_size(self) -> str:
        """Ollama's rendering of the parameter count: "134.52M", "1.2B", "8B"."""
        return human_number(self.parameter_count)

    def model_info(self, verbose: bool = False) -> dict[str, Any]:
        """``/api/show``'s ``model_info``: GGUF keys; long arrays (tokens, merges) null unless verbose."""
        info: dict[str, Any] = {}
        for key, value in self.metadata.items():
            if isinstance(value, tuple):
                value = list(value) if verbose or len(value) <= _SHORT_ARRAY else None
            info[key] = value
        info["general.parameter_count"] = self.parameter_count
        return info


def human_number(n: int) -> str:
    """Format a count the way Ollama's format.HumanNumber does."""
    for scale, suffix, decimals in ((1e9, "B", 1), (1e6, "M", 2)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{suffix}" if value == int(value) else f"{value:.{decimals}f}{suffix}"
    if n >= 1e3:
        return f"{n / 1e3:.0f}K"
    return str(n)


def quantization_name(file_type: int | None) -> str:
    """``general.file_type`` as Ollama names it (MOSTLY_Q4_K_M → "Q4_K_M", ALL_F32 → "F32")."""
    if file_type is None:
        return "unknown"
    try:
        name = LlamaFileType(file_type).name
    except ValueError:
        return "unknown"
    for prefix in ("MOSTLY_", "ALL_"):
        name = name.removeprefix(prefix)
    return name


def read_gguf_info(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read a GGUF file's metadata; raises InvalidModelFile for anything that is not a sound GGUF."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise InvalidModelFile(f"cannot read model file {path.name}: {e.strerror}") from None
    # Blobs never change in place, so (device, inode, size, mtime) identifies the content, whatever
    # name or hard link it is reached through.
    return _read_cached(str(path), (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


def _read_cached(path: str, identity: tuple) -> GGUFInfo:
    cached = _CACHE.get(identity)
    if cached is None:
        cached = _read_uncached(path, identity[2])
        _CACHE[identity] = cached
        while len(_CACHE) > 16:
            _CACHE.pop(next(iter(_CACHE)))
    return cached


_CACHE: dict[tuple, GGUFInfo] = {}


def _read_uncached(path: str, size: int) -> GGUFInfo:
    _check_header(path, size)
    error = None
    try:
        reader = _BoundedReader(path)
        info = _info_from_reader(reader, size)
    except _Malformed as e:
        error = str(e)
    except (ValueError, KeyError, IndexError, TypeError, OverflowError) as e:
        error = f"malformed GGUF file: {e}"
    except OSError as e:
        error = f"cannot read model file: {e.strerror or e}"
    # Raised outside the except blocks: a chained exception's traceback would hold the reader's
    # frames, and with them the memory map, open.
    if error is not None:
        raise InvalidModelFile(error)
    return info


def _check_header(path: str, size: int) -> None:
    """Refuse what is obviously not a GGUF before handing the file to the reader."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
    except OSError as e:
        raise InvalidModelFile(f"cannot read model file: {e.strerror}") from None
    if head[:4] != b"GGUF":
        raise InvalidModelFile("not a GGUF file (bad magic number)")
    if len(head) < _HEADER.size:
        raise InvalidModelFile(f"truncated GGUF file: {size} bytes is shorter than the GGUF header")
    _, version, n_tensors, n_kv = _HEADER.unpack(head)
    if version & 0xFFFF == 0:  # written big-endian
        _, version, n_tensors, n_kv = struct.unpack(">4sIQQ", head)
    if version not in (2, 3):
        raise InvalidModelFile(f"unsupported GGUF version {version} (supported: 2, 3)")
    if n_tensors * _MIN_TENSOR_BYTES + n_kv * _MIN_KV_BYTES > size:
        raise InvalidModelFile(
            f"truncated GGUF file: header declares {n_tensors} tensors and {n_kv} metadata keys, "
            f"more than {size} bytes can hold"
        )


class _Malformed(Exception):
    """Raised inside the reader; its text becomes the InvalidModelFile message."""


class _BoundedReader(GGUFReader):
    """GGUFReader with every read checked against the file size and array sizes capped.

    Left unchecked, the reader silently returns short arrays at EOF and loops over any declared
    array length, which turns a small crafted file into a huge allocation.
    """

    def __init__(self, path: str):
        self._items_left = MAX_TOTAL_ITEMS
        super().__init__(path, "r")

    def _get(self, offset, dtype, count=1, override_order=None):  # type: ignore[override]
        count = int(count)
        end = int(offset) + np.dtype(dtype).itemsize * count
        if offset < 0 or count < 0 or end > self.data.shape[0]:
            raise _Malformed("truncated GGUF file: metadata runs past the end of the file")
        return super()._get(offset, dtype, count, override_order)

    def _get_field_parts(self, orig_offs, raw_type):  # type: ignore[override]
        if int(raw_type) != GGUFValueType.ARRAY:
            return super()._get_field_parts(orig_offs, raw_type)
        raw_item_type, length = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
        count = int(length[0])
        self._items_left -= count
        if count > MAX_ARRAY_ITEMS or self._items_left < 0:
            raise _Malformed(f"malformed GGUF file: metadata array of {count} items is too large")
        item_type = GGUFValueType(int(raw_item_type[0]))
        scalar = self.gguf_scalar_to_np.get(item_type)
        if scalar is None:  # strings and nested arrays: the reader's item-by-item walk
            return super()._get_field_parts(orig_offs, raw_type)
        # Scalar arrays (token types, scores) as one view instead of one per item: the stock
        # reader spends seconds on a 262k-token vocabulary. Only _field_value reads these parts.
        values = self._get(orig_offs + 12, scalar, count)
        size = int(raw_item_type.nbytes + length.nbytes + values.nbytes)
        return size, [raw_item_type, length, values], [2], [GGUFValueType.ARRAY, item_type]

    def _build_tensors(self, start_offs, fields):  # type: ignore[override]
        file_size = self.data.shape[0]
        for field in fields:
            _check_tensor(field, int(start_offs), file_size)
        super()._build_tensors(start_offs, fields)


def _check_tensor(field: Any, data_start: int, file_size: int) -> None:
    """Bounds-check one tensor's shape, type and data extent (Bleeding Llama, CVE-2026-7482)."""
    _, name_data, _, dims, raw_type, offset = field.parts
    name = bytes(name_data).decode("utf-8", "replace")
    if len(dims) > MAX_TENSOR_DIMS:
        raise _Malformed(f'malformed GGUF file: tensor "{name}" has {len(dims)} dimensions (at most 4)')
    try:
        sizes = GGML_QUANT_SIZES.get(GGMLQuantizationType(int(raw_type[0])))
    except ValueError:
        sizes = None
    if sizes is None:
        raise _Malformed(f'malformed GGUF file: tensor "{name}" has unknown type {int(raw_type[0])}')
    elements = 1
    for dim in dims.tolist():
        elements *= int(dim)
    block_size, type_size = sizes
    end = data_start + int(offset[0]) + elements * type_size // block_size
    if end > file_size:
        raise _Malformed(
            f'truncated GGUF file: tensor "{name}" ends at byte {end} but the file has {file_size} bytes'
        )


def _info_from_reader(reader: GGUFReader, file_size: int) -> GGUFInfo:
    meta = {name: _field_value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise _Malformed("malformed GGUF file: general.architecture is missing")
    layer_bytes, output_bytes, total, params = _tensor_sizes(reader)

    def arch_int(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    embedding, heads = arch_int("embedding_length"), arch_int("attention.head_count")
    head_dim = embedding // heads if embedding and heads else None
    tokens = meta.get("tokenizer.ggml.tokens")
    file_type = meta.get("general.file_type")
    file_type = int(file_type) if isinstance(file_type, int) else None
    template = meta.get("tokenizer.chat_template")
    return GGUFInfo(
        architecture=arch,
        parameter_count=params,
        file_type=file_type,
        quantization=quantization_name(file_type),
        context_length=arch_int("context_length"),
        embedding_length=embedding,
        block_count=arch_int("block_count"),
        head_count=heads,
        head_count_kv=arch_int("attention.head_count_kv") or heads,
        key_length=arch_int("attention.key_length") or head_dim,
        value_length=arch_int("attention.value_length") or head_dim,
        vocab_size=arch_int("vocab_size") or (len(tokens) if isinstance(tokens, tuple) else None),
        chat_template=template if isinstance(template, str) else None,
        metadata=MappingProxyType(meta),
        layer_bytes=MappingProxyType(layer_bytes),
        output_bytes=output_bytes,
        total_tensor_bytes=total,
        tensor_count=len(reader.tensors),
        file_size=file_size,
        fim_tokens=fim_token_ids(meta),
    )


# Where llama.cpp finds the fill-in-middle tokens (llama-vocab.cpp): ids in the metadata (the current
# key, then the deprecated one, a later valid id winning), else the first token with a known text.
_FIM_KEYS = (
    ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
    ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
    ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
)
_FIM_TEXTS = (
    ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
     "<|code_prefix|>", "<|prefix|>"),
    ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
     "<|code_suffix|>", "<|suffix|>"),
    ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
     "<|code_middle|>", "<|middle|>"),
)
_FIM_ROLE = {text: role for role, texts in enumerate(_FIM_TEXTS) for text in texts}


def fim_token_ids(meta: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """The fill-in-middle prefix, suffix and middle token ids as llama.cpp finds them, or None.

    Decided once when the file is read (``GGUFInfo.fim_tokens``): nothing searches the vocabulary
    again per request.
    """
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, tuple):
        return None
    found = [_declared_token(meta, keys, len(tokens)) for keys in _FIM_KEYS]
    if None in found:
        for token_id, text in enumerate(tokens):
            role = _FIM_ROLE.get(text)
            if role is not None and found[role] is None:
                found[role] = token_id
    pre, suf, mid = found
    return None if pre is None or suf is None or mid is None else (pre, suf, mid)


def _declared_token(meta: Mapping[str, Any], keys: tuple[str, ...], n_vocab: int) -> int | None:
    found = None
    for key in keys:
        value = meta.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_vocab:
            found = value
    return found


def _tensor_sizes(reader: GGUFReader) -> tuple[dict[int, int], int, int, int]:
    """Bytes per ``blk.N`` layer, bytes of the output layer, total bytes, total parameters."""
    layers: dict[int, int] = {}
    by_prefix: dict[str, int] = {}
    total = params = 0
    for tensor in reader.tensors:
        size, prefix = int(tensor.n_bytes), tensor.name.split(".", 1)[0]
        total += size
        params += int(tensor.n_elements)
        parts = tensor.name.split(".")
        if prefix == "blk" and len(parts) > 2 and parts[1].isdigit():
            layers[int(parts[1])] = layers.get(int(parts[1]), 0) + size
        else:
            by_prefix[prefix] = by_prefix.get(prefix, 0) + size
    # As Ollama's estimator: output norm plus the output matrix, or the tied embedding without one.
    output = by_prefix.get("output_norm", 0) + by_prefix.get("output", by_prefix.get("token_embd", 0))
    return layers, output, total, params


def _field_value(field: Any) -> Any:
    """A metadata field as a Python value (arrays as tuples), read from the reader's parsed parts."""
    types = field.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        if len(types) > 1 and types[-1] == GGUFValueType.STRING:
            return tuple(_text(field.parts[i]) for i in field.data)
        return tuple(v for i in field.data for v in field.parts[i].tolist())
    if types[0] == GGUFValueType.STRING:
        return _text(field.parts[-1])
    if types[0] == GGUFValueType.FLOAT32:
        return _float32(field.parts[-1][0])
    return field.parts[-1].tolist()[0]


def _text(part: Any) -> str:
    return part.tobytes().decode("utf-8", "replace")


def _float32(value: Any) -> float:
    # The shortest decimal that round-trips through float32: 1e-05, not 9.999999747378752e-06.
    return float(str(np.float32(value)))
