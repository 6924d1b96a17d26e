"""What a GGUF file says about its model: architecture, size, quantization, shapes, chat template,
fill-in-middle tokens.

A small reader of the GGUF header, metadata and tensor infos (the ``gguf`` package supplies the type
tables). Crafted GGUFs have crashed Ollama (4-byte files, alignment 0, tensors past EOF, huge arrays:
CVE-2024-39720, CVE-2025-0317, CVE-2026-7482) and 16 MiB of tiny strings cost this daemon 50 s and
2.5 GB through ``GGUFReader``, so:

- every read is checked against the file's end and against ``MetadataLimits`` (key/value pairs,
  string and array lengths, strings in arrays, bytes examined, tensors); a file beyond one is refused
  with InvalidModelFile naming the limit;
- arrays longer than a few items (the vocabulary: tokens, merges, scores, token types) are stepped
  over, not decoded: ``GGUFInfo.metadata`` keeps their type and length (``MetadataArray``) and
  ``model_info(verbose=True)`` reads them again when asked. The fill-in-middle tokens are found during
  that step by comparing the few candidate texts, without a Python string per token;
- arrays of arrays, which llama.cpp cannot load, are refused; nothing recurses.

The file is memory-mapped only while it is read. What llama.cpp would still abort on (no tensors,
zero layers, NaN hyper-parameters) is refused by ``create.check_loadable`` for create and pull.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, LlamaFileType

from llmhost.errors import InvalidModelFile


@dataclass(frozen=True)
class MetadataLimits:
    """Bounds on the work of reading one GGUF file; a file beyond any of them is refused (400).

    The defaults leave real models a wide margin: the largest vocabularies have ~262k tokens and
    ~500k merges, and a whole header with them is under 20 MiB.
    """

    max_kv_count: int = 4096  # metadata key/value pairs (real files: under 100)
    max_string_bytes: int = 1 << 20  # one key, string value or array item (chat templates: tens of KB)
    max_array_items: int = 1 << 20  # items in one array: 4x the largest vocabulary
    max_string_items: int = 1 << 21  # strings in all arrays together: each costs a step to pass over
    max_metadata_bytes: int = 64 << 20  # header, metadata and tensor infos read
    max_tensors: int = 1 << 16  # tensor infos (real files: a few thousand)


DEFAULT_LIMITS = MetadataLimits()
MAX_TENSOR_DIMS = 4  # GGML_MAX_DIMS
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME less its NUL: llama.cpp refuses longer names
_HEADER = struct.Struct("<4sIQQ")  # magic, version, tensor count, metadata count
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset
_SHORT_ARRAY = 5  # Ollama's /api/show hides arrays longer than this unless verbose; only these are kept
_TOKENS = "tokenizer.ggml.tokens"
_ALIGNMENT = "general.alignment"
# struct codes of GGUF's scalar types (the gguf package keeps its own table private to its writer)
_SCALAR_CODES = {
    GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d",
}
_TENSOR_TYPES = {int(t): (t.name, *GGML_QUANT_SIZES[t]) for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}


@dataclass(frozen=True)
class MetadataArray:
    """A metadata array too long to keep (tokens, merges, scores): its item type and length.

    ``GGUFInfo.model_info(verbose=True)`` reads its values from the file when they are asked for.
    """

    item_type: GGUFValueType
    count: int

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class GGUFInfo:
    """Metadata of one GGUF file, with per-layer tensor sizes for memory estimates.

    ``metadata`` holds every key/value pair of the file in file order: scalars, strings, arrays of up
    to five items as tuples, longer arrays as ``MetadataArray``. Results are cached per file.
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
    # Bytes of the weight matrices a matmul reads (blk.* and output.weight, 2+ dimensions) per
    # tensor type name ("Q4_0"): what llama.cpp may repack for its CPU kernels (daemon/memory.py).
    matrix_bytes_by_type: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    path: Path | None = field(default=None, compare=False)  # where long arrays are read from on demand

    @property
    def parameter_size(self) -> str:
        """Ollama's rendering of the parameter count: "134.52M", "1.2B", "8B"."""
        return human_number(self.parameter_count)

    @property
    def is_projector(self) -> bool:
        """A multimodal projector (llama.cpp's ``mmproj``), not a model: Ollama's test
        (server/create.go ``isProjectorGGUF``) — ``general.type`` projector or mmproj, or a vision
        encoder without text layers — and any ``clip`` file, which is what llama.cpp writes them as."""
        arch = self.architecture
        vision_only = not self.metadata.get(f"{arch}.block_count") and bool(
            self.metadata.get(f"{arch}.vision.block_count"))
        return arch == "clip" or self.metadata.get("general.type") in ("projector", "mmproj") or vision_only

    def model_info(self, verbose: bool = False) -> dict[str, Any]:
        """``/api/show``'s ``model_info``: GGUF keys; long arrays (tokens, merges) null unless verbose.

        Verbose reads the long arrays from the file again (bounded by the default limits).
        """
        metadata = self.metadata
        if verbose and self.path is not None and any(isinstance(v, MetadataArray) for v in metadata.values()):
            metadata = read_metadata(self.path)
        info = {key: _shown(value, verbose) for key, value in metadata.items()}
        info["general.parameter_count"] = self.parameter_count
        return info


def _shown(value: Any, verbose: bool) -> Any:
    if isinstance(value, MetadataArray):
        return None
    if isinstance(value, tuple):
        return list(value) if verbose or len(value) <= _SHORT_ARRAY else None
    return value


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


# ---- reading ------------------------------------------------------------------------------------


def read_gguf_info(path: str | os.PathLike[str], limits: MetadataLimits = DEFAULT_LIMITS) -> GGUFInfo:
    """Read a GGUF file's metadata; raises InvalidModelFile for anything that is not a sound GGUF
    or exceeds ``limits``."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise InvalidModelFile(f"cannot read model file {path.name}: {e.strerror}") from None
    # Blobs never change in place, so (device, inode, size, mtime) identifies the content, whatever
    # name or hard link it is reached through.
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, limits)
    info = _CACHE.get(key)
    if info is None:
        info = _CACHE.put(key, _build_info(_read(path, limits, keep_arrays=False), path))
    return info if info.path == path else replace(info, path=path)


def read_metadata(path: str | os.PathLike[str], limits: MetadataLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Every metadata key/value pair, long arrays decoded too (tuples): for verbose ``/api/show``."""
    return _read(Path(path), limits, keep_arrays=True).metadata


class _InfoCache:
    """Recently read files' GGUFInfo, bounded in entries and in the bytes their metadata holds."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 32 << 20):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: dict[tuple, tuple[GGUFInfo, int]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> GGUFInfo | None:
        with self._lock:
            found = self._entries.get(key)
            return found[0] if found else None

    def put(self, key: tuple, info: GGUFInfo) -> GGUFInfo:
        weight = _weight(info)
        with self._lock:
            old = self._entries.pop(key, None)
            self._bytes += weight - (old[1] if old else 0)
            self._entries[key] = (info, weight)
            while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
                self._bytes -= self._entries.pop(next(iter(self._entries)))[1]
        return info


def _weight(info: GGUFInfo) -> int:
    """Rough bytes an info keeps alive: its keys and string values dominate."""
    strings = sum(len(key) + (len(value) if isinstance(value, str) else 16) for key, value in info.metadata.items())
    return 1024 + strings + 32 * len(info.layer_bytes)


_CACHE = _InfoCache()


class _Malformed(Exception):
    """Raised inside the reader; its text becomes the InvalidModelFile message."""


class _Parsed(NamedTuple):
    metadata: dict[str, Any]
    tensors: _Tensors
    fim_hits: dict[str, int]  # fill-in-middle token text → its first id
    file_size: int


def _read(path: Path, limits: MetadataLimits, keep_arrays: bool) -> _Parsed:
    """Parse the header, metadata and (unless ``keep_arrays``, which decodes long arrays) tensor infos."""
    error = None
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            order, n_tensors, n_kv = _check_header(f.read(_HEADER.size), size, limits)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                reader = _Reader(buf, order, limits, keep_arrays)
                meta = reader.metadata(n_kv)
                tensors = _Tensors() if keep_arrays else reader.tensors(n_tensors, _alignment(meta))
                return _Parsed(meta, tensors, reader.fim_hits, size)
    except _Malformed as e:
        error = str(e)
    except (ValueError, OverflowError, struct.error) as e:
        error = f"malformed GGUF file: {e}"
    except OSError as e:
        error = f"cannot read model file: {e.strerror or e}"
    raise InvalidModelFile(error)


def _check_header(head: bytes, size: int, limits: MetadataLimits) -> tuple[str, int, int]:
    """Refuse what is obviously not a GGUF; returns the byte order ("<" or ">") and the counts."""
    if head[:4] != b"GGUF":
        raise _Malformed("not a GGUF file (bad magic number)")
    if len(head) < _HEADER.size:
        raise _Malformed(f"truncated GGUF file: {size} bytes is shorter than the GGUF header")
    order = "<"
    _, version, n_tensors, n_kv = _HEADER.unpack(head)
    if version & 0xFFFF == 0:  # written big-endian
        order = ">"
        _, version, n_tensors, n_kv = struct.unpack(">4sIQQ", head)
    if version not in (2, 3):
        raise _Malformed(f"unsupported GGUF version {version} (supported: 2, 3)")
    if n_tensors * _MIN_TENSOR_BYTES + n_kv * _MIN_KV_BYTES > size:
        raise _Malformed(
            f"truncated GGUF file: header declares {n_tensors} tensors and {n_kv} metadata keys, "
            f"more than {size} bytes can hold"
        )
    if n_kv > limits.max_kv_count:
        raise _Malformed(f"GGUF file has {n_kv} metadata keys; the limit is {limits.max_kv_count}")
    if n_tensors > limits.max_tensors:
        raise _Malformed(f"GGUF file has {n_tensors} tensors; the limit is {limits.max_tensors}")
    return order, n_tensors, n_kv


@dataclass
class _Tensors:
    """What the memory estimate needs from the tensor infos, summed while they are read."""

    count: int = 0
    parameters: int = 0
    total_bytes: int = 0
    layers: dict[int, int] = field(default_factory=dict)  # bytes per blk.N
    by_prefix: dict[str, int] = field(default_factory=dict)  # bytes per first name part outside blk.N
    matrices: dict[str, int] = field(default_factory=dict)  # bytes per type of blk.* / output matrices

    def add(self, name: str, elements: int, n_bytes: int, type_name: str = "", n_dims: int = 0) -> None:
        self.count += 1
        self.parameters += elements
        self.total_bytes += n_bytes
        parts = name.split(".")
        if parts[0] == "blk" and len(parts) > 2 and parts[1].isdigit():
            self.layers[int(parts[1])] = self.layers.get(int(parts[1]), 0) + n_bytes
        else:
            self.by_prefix[parts[0]] = self.by_prefix.get(parts[0], 0) + n_bytes
        if n_dims >= 2 and parts[0] in ("blk", "output"):
            self.matrices[type_name] = self.matrices.get(type_name, 0) + n_bytes

    @property
    def output_bytes(self) -> int:
        # As Ollama's estimator: output norm plus the output matrix, or the tied embedding without one.
        by = self.by_prefix
        return by.get("output_norm", 0) + by.get("output", by.get("token_embd", 0))


class _Reader:
    """Reads GGUF values from a memory map; every read is checked against what may be read."""

    def __init__(self, buf: mmap.mmap, order: str, limits: MetadataLimits, keep_arrays: bool):
        self.buf, self.order, self.limits, self.keep_arrays = buf, order, limits, keep_arrays
        self.file_size = len(buf)
        self.end = min(self.file_size, limits.max_metadata_bytes)
        self.pos = _HEADER.size
        self.string_items = 0
        self.fim_hits: dict[str, int] = {}  # fill-in-middle token text → its first id
        self._u32, self._u64 = struct.Struct(order + "I"), struct.Struct(order + "Q")
        self._scalars = {int(t): struct.Struct(order + code) for t, code in _SCALAR_CODES.items()}

    def take(self, n: int) -> int:
        """Advance over ``n`` bytes; returns where they start."""
        start = self.pos
        if start + n > self.end:
            raise self.past_end()
        self.pos = start + n
        return start

    def past_end(self) -> _Malformed:
        if self.end < self.file_size:
            limit = self.limits.max_metadata_bytes
            return _Malformed(f"GGUF metadata is larger than {limit} bytes, the limit on what is read of a file")
        return _Malformed("truncated GGUF file: metadata runs past the end of the file")

    def u32(self) -> int:
        return self._u32.unpack_from(self.buf, self.take(4))[0]

    def u64(self) -> int:
        return self._u64.unpack_from(self.buf, self.take(8))[0]

    def string(self, what: str, limit: int | None = None) -> str:
        n = self.u64()
        start = self.take(n)
        limit = self.limits.max_string_bytes if limit is None else limit
        if n > limit:
            raise _Malformed(f"malformed GGUF file: {what} is {n} bytes long; the limit is {limit}")
        return self.buf[start:start + n].decode("utf-8", "replace")

    def metadata(self, count: int) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for _ in range(count):
            key = self.string("a metadata key")
            if key in meta:
                raise _Malformed(f'malformed GGUF file: metadata key "{key}" appears twice')
            vtype = self.u32()
            if key == _ALIGNMENT and vtype != GGUFValueType.UINT32:  # llama.cpp asserts on any other type
                raise _Malformed(f"malformed GGUF file: {_ALIGNMENT} must be a uint32 (type {vtype})")
            meta[key] = self.array(key) if vtype == GGUFValueType.ARRAY else self.scalar(vtype, key)
        return meta

    def scalar(self, vtype: int, key: str) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string(f'metadata value "{key}"')
        fmt = self._scalars.get(vtype)
        if fmt is None:
            raise _Malformed(f'malformed GGUF file: metadata key "{key}" has unknown value type {vtype}')
        value = fmt.unpack_from(self.buf, self.take(fmt.size))[0]
        return _float32(value) if vtype == GGUFValueType.FLOAT32 else value

    def array(self, key: str) -> tuple | MetadataArray:
        item_type, count = self.u32(), self.u64()
        if item_type == GGUFValueType.ARRAY:
            raise _Malformed(f'malformed GGUF file: metadata key "{key}" is an array of arrays, '
                             "which llama.cpp cannot load")
        if count > self.limits.max_array_items:
            raise _Malformed(f'malformed GGUF file: metadata array "{key}" of {count} items is too large; '
                             f"the limit is {self.limits.max_array_items} items")
        keep = count <= _SHORT_ARRAY or self.keep_arrays
        if item_type == GGUFValueType.STRING:
            return self.strings(key, count, keep)
        fmt = self._scalars.get(item_type)
        if fmt is None:
            raise _Malformed(f'malformed GGUF file: metadata array "{key}" has unknown item type {item_type}')
        start = self.take(fmt.size * count)
        if not keep:
            return MetadataArray(GGUFValueType(item_type), count)
        values = np.frombuffer(self.buf[start:self.pos], dtype=fmt.format).tolist()
        if item_type == GGUFValueType.FLOAT32 and count <= _SHORT_ARRAY:
            values = [_float32(v) for v in values]
        return tuple(values)

    def strings(self, key: str, count: int, keep: bool) -> tuple | MetadataArray:
        self.string_items += count
        if self.string_items > self.limits.max_string_items:
            raise _Malformed(f"malformed GGUF file: its metadata arrays hold more than {self.limits.max_string_items} "
                             "strings, the limit")
        if keep:
            values = tuple(self.string(f'an item of "{key}"') for _ in range(count))
            if key == _TOKENS:
                for index, text in enumerate(values):
                    if text in _FIM_ROLE:
                        self.fim_hits.setdefault(text, index)
            return values
        self.skip_strings(key, count, _FIM_BYTES if key == _TOKENS else {})
        return MetadataArray(GGUFValueType.STRING, count)

    def skip_strings(self, key: str, count: int, watch: Mapping[bytes, str]) -> None:
        """Step over ``count`` strings without decoding them, noting the first index of each text in
        ``watch``: only strings of a watched length are compared, so no object is kept per item."""
        buf, end, limit, unpack = self.buf, self.end, self.limits.max_string_bytes, self._u64.unpack_from
        lengths = {len(text) for text in watch}
        pos = self.pos
        for index in range(count):
            if pos + 8 > end:
                raise self.past_end()
            n = unpack(buf, pos)[0]
            pos += 8
            if n > limit:
                raise _Malformed(f'malformed GGUF file: an item of "{key}" is {n} bytes long; the limit is {limit}')
            if n in lengths:
                text = watch.get(buf[pos:pos + n])
                if text is not None and text not in self.fim_hits:
                    self.fim_hits[text] = index
            pos += n
        if pos > end:
            raise self.past_end()
        self.pos = pos

    def tensors(self, count: int, alignment: int) -> _Tensors:
        """Read the tensor infos, checking each against llama.cpp's rules and the file's extent."""
        sizes, names, last = _Tensors(), set(), (0, "")
        for _ in range(count):
            name = self.string("a tensor name", MAX_TENSOR_NAME)
            if name in names:
                raise _Malformed(f'malformed GGUF file: two tensors are named "{name}"')
            names.add(name)
            elements, n_bytes, offset, type_name, n_dims = self.tensor_info(name)
            sizes.add(name, elements, n_bytes, type_name, n_dims)
            last = max(last, (offset + n_bytes, name))
        data_start = -(-self.pos // alignment) * alignment
        if count and data_start + last[0] > self.file_size:
            raise _Malformed(f'truncated GGUF file: tensor "{last[1]}" ends at byte {data_start + last[0]} '
                             f"but the file has {self.file_size} bytes")
        return sizes

    def tensor_info(self, name: str) -> tuple[int, int, int, str, int]:
        """(elements, bytes, data offset, type name, dimensions) of the tensor whose name was just read."""
        n_dims = self.u32()
        if n_dims > MAX_TENSOR_DIMS:
            raise _Malformed(f'malformed GGUF file: tensor "{name}" has {n_dims} dimensions (at most 4)')
        dims = struct.unpack_from(f"{self.order}{n_dims}Q", self.buf, self.take(8 * n_dims))
        raw_type = self.u32()
        offset = self.u64()
        known = _TENSOR_TYPES.get(raw_type)
        if known is None:
            raise _Malformed(f'malformed GGUF file: tensor "{name}" has unknown type {raw_type}')
        type_name, block_size, type_size = known
        if dims and dims[0] % block_size:
            raise _Malformed(f'malformed GGUF file: tensor "{name}" has rows of {dims[0]} values, '
                             f"not a multiple of the {type_name} block size {block_size}")
        elements = math.prod(dims)
        return elements, elements * type_size // block_size, offset, type_name, n_dims


def _alignment(meta: Mapping[str, Any]) -> int:
    alignment = meta.get(_ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
    if alignment <= 0 or alignment & (alignment - 1):
        raise _Malformed(f"malformed GGUF file: {_ALIGNMENT} must be a power of two, got {alignment}")
    return alignment


def _float32(value: float) -> float:
    # The shortest decimal that round-trips through float32: 1e-05, not 9.999999747378752e-06.
    return float(str(np.float32(value)))


# ---- what the daemon keeps -----------------------------------------------------------------------


def _build_info(parsed: _Parsed, path: Path) -> GGUFInfo:
    meta, tensors = parsed.metadata, parsed.tensors
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidModelFile("malformed GGUF file: general.architecture is missing")

    def arch_int(key: str) -> int | None:
        return _as_int(meta.get(f"{arch}.{key}"))

    embedding, heads = arch_int("embedding_length"), arch_int("attention.head_count")
    head_dim = embedding // heads if embedding and heads else None
    tokens = meta.get(_TOKENS)
    file_type = _as_int(meta.get("general.file_type"))
    template = meta.get("tokenizer.chat_template")
    return GGUFInfo(
        architecture=arch,
        parameter_count=tensors.parameters,
        file_type=file_type,
        quantization=quantization_name(file_type),
        context_length=arch_int("context_length"),
        embedding_length=embedding,
        block_count=arch_int("block_count"),
        head_count=heads,
        head_count_kv=arch_int("attention.head_count_kv") or heads,
        key_length=arch_int("attention.key_length") or head_dim,
        value_length=arch_int("attention.value_length") or head_dim,
        vocab_size=arch_int("vocab_size") or (len(tokens) if isinstance(tokens, (tuple, MetadataArray)) else None),
        chat_template=template if isinstance(template, str) else None,
        metadata=MappingProxyType(meta),
        layer_bytes=MappingProxyType(tensors.layers),
        output_bytes=tensors.output_bytes,
        total_tensor_bytes=tensors.total_bytes,
        matrix_bytes_by_type=MappingProxyType(tensors.matrices),
        tensor_count=tensors.count,
        file_size=parsed.file_size,
        fim_tokens=fim_token_ids(meta, parsed.fim_hits),
        path=path,
    )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value)


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
_FIM_BYTES = {text.encode(): text for text in _FIM_ROLE}


def fim_token_ids(meta: Mapping[str, Any], text_ids: Mapping[str, int]) -> tuple[int, int, int] | None:
    """The fill-in-middle prefix, suffix and middle token ids as llama.cpp finds them, or None.

    ``text_ids``: the first id of each known fill-in-middle text in the vocabulary (found while the
    file is read). Decided once per file (``GGUFInfo.fim_tokens``), never per request.
    """
    tokens = meta.get(_TOKENS)
    if not isinstance(tokens, (tuple, MetadataArray)):
        return None
    found = [_declared_token(meta, keys, len(tokens)) for keys in _FIM_KEYS]
    for role, texts in enumerate(_FIM_TEXTS):
        ids = [text_ids[text] for text in texts if text in text_ids]
        if found[role] is None and ids:
            found[role] = min(ids)
    pre, suf, mid = found
    return None if pre is None or suf is None or mid is None else (pre, suf, mid)


def _declared_token(meta: Mapping[str, Any], keys: tuple[str, ...], n_vocab: int) -> int | None:
    found = None
    for key in keys:
        value = meta.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_vocab:
            found = value
    return found
