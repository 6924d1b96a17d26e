"""A tiny random-weight multimodal projector (``--mmproj``) for fast vision tests.

A CLIP-style ViT (``n_layer`` blocks of width ``n_embd``) with LLaVA's two-layer MLP projector
(``clip.projector_type`` "mlp"), as llama.cpp's tools/mtmd/clip.cpp (vendored by llama-cpp-python
0.3.36) loads it. Its output width must equal the text model's embedding width (64 for
``tests/support/tiny_gguf.py``'s model, 576 for SmolLM2). An image becomes
``(image_size / patch_size)²`` positions (16 by default); the LLaVA graph runs ``n_layer - 1`` blocks
but every block's tensors must be there. A projector missing a tensor can crash llama.cpp while it
loads (which is why the runner, a process of its own, loads it).

    write_tiny_mmproj(path, n_embd_text=64)

Also ``png`` (a PNG written with zlib, no Pillow) for the images the tests send.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from tests.support.tiny_gguf import _write as write_tensors  # adds the tensors and writes the file


def write_tiny_mmproj(path: Path, *, n_embd_text: int = 64, image_size: int = 32, patch_size: int = 8,
                      n_embd: int = 32, n_head: int = 2, n_ff: int = 64, n_layer: int = 2, mm_hidden: int = 64,
                      seed: int = 1, omit: tuple[str, ...] = ()) -> Path:
    """Write the projector and return ``path``; ``omit`` leaves out metadata keys (to make bad files).

    numpy shapes are GGUF's dims reversed; ``n_ff`` must differ from ``n_embd`` (clip.cpp takes equal
    ones for swapped feed-forward tensors)."""
    assert image_size % patch_size == 0 and n_ff != n_embd
    n_pos = (image_size // patch_size) ** 2
    rng = np.random.default_rng(seed)

    def weight(*dims: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(dims) * scale).astype(np.float32)

    writer = GGUFWriter(str(path), "clip")
    writer.add_name("tiny-mmproj-test")
    writer.add_file_type(0)
    for key, add, value in (
        ("clip.has_vision_encoder", writer.add_bool, True),
        ("clip.projector_type", writer.add_string, "mlp"),
        ("clip.vision.image_size", writer.add_uint32, image_size),
        ("clip.vision.patch_size", writer.add_uint32, patch_size),
        ("clip.vision.embedding_length", writer.add_uint32, n_embd),
        ("clip.vision.feed_forward_length", writer.add_uint32, n_ff),
        ("clip.vision.block_count", writer.add_uint32, n_layer),
        ("clip.vision.attention.head_count", writer.add_uint32, n_head),
        ("clip.vision.projection_dim", writer.add_uint32, n_embd_text),
        ("clip.vision.attention.layer_norm_epsilon", writer.add_float32, 1e-6),
        ("clip.vision.image_mean", writer.add_array, [0.5, 0.5, 0.5]),
        ("clip.vision.image_std", writer.add_array, [0.5, 0.5, 0.5]),
        ("clip.use_gelu", writer.add_bool, True),
    ):
        if key not in omit:
            add(key, value)  # type: ignore[operator]
    tensors = [
        ("v.patch_embd.weight", weight(n_embd, 3, patch_size, patch_size)),  # conv2d kernel
        ("v.patch_embd.bias", weight(n_embd)),
        ("v.position_embd.weight", weight(n_pos, n_embd)),
        ("v.pre_ln.weight", np.ones(n_embd, np.float32)),
        ("v.pre_ln.bias", np.zeros(n_embd, np.float32)),
    ]
    for i in range(n_layer):
        block = f"v.blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors += [(f"{block}.{name}.weight", weight(n_embd, n_embd)), (f"{block}.{name}.bias", weight(n_embd))]
        for name in ("ln1", "ln2"):
            tensors += [(f"{block}.{name}.weight", np.ones(n_embd, np.float32)),
                        (f"{block}.{name}.bias", np.zeros(n_embd, np.float32))]
        tensors += [(f"{block}.ffn_up.weight", weight(n_ff, n_embd)), (f"{block}.ffn_up.bias", weight(n_ff)),
                    (f"{block}.ffn_down.weight", weight(n_embd, n_ff)), (f"{block}.ffn_down.bias", weight(n_embd))]
    # LLaVA's projector: mm.0 (n_embd → mm_hidden), GELU, mm.2 (mm_hidden → the text model's width)
    tensors += [("mm.0.weight", weight(mm_hidden, n_embd, scale=0.3)), ("mm.0.bias", weight(mm_hidden)),
                ("mm.2.weight", weight(n_embd_text, mm_hidden, scale=0.3)), ("mm.2.bias", weight(n_embd_text))]
    write_tensors(writer, tensors)
    return path


def png(width: int, height: int, seed: int = 0) -> bytes:
    """An 8-bit RGB PNG of random pixels (a different image for each seed)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width * 3), dtype=np.uint8)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
