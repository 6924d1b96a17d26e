"""Builders for registry tests: tiny GGUF files, broken ones, wheels, store snapshots."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import gguf
import numpy as np

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"t{i}" for i in range(29)]
WIDTH, LAYERS, FFN = 64, 2, 128


def write_tiny_gguf(path: Path, *, alignment: int | None = None, name: str = "tiny") -> Path:
    """A 2-layer llama-architecture GGUF of width 64 with float32 weights (~200 KB)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_context_length(256)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(VOCAB))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(VOCAB)
    writer.add_token_types([1] * len(VOCAB))
    writer.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(0)

    def tensor(tname: str, *shape: int) -> None:
        writer.add_tensor(tname, rng.standard_normal(shape).astype(np.float32))

    tensor("token_embd.weight", len(VOCAB), WIDTH)
    tensor("output_norm.weight", WIDTH)
    tensor("output.weight", len(VOCAB), WIDTH)
    for i in range(LAYERS):
        tensor(f"blk.{i}.attn_norm.weight", WIDTH)
        for part, rows in (("q", WIDTH), ("k", WIDTH // 2), ("v", WIDTH // 2), ("output", WIDTH)):
            tensor(f"blk.{i}.attn_{part}.weight", rows, WIDTH)
        tensor(f"blk.{i}.ffn_norm.weight", WIDTH)
        tensor(f"blk.{i}.ffn_gate.weight", FFN, WIDTH)
        tensor(f"blk.{i}.ffn_up.weight", FFN, WIDTH)
        tensor(f"blk.{i}.ffn_down.weight", WIDTH, FFN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build_wheel(path: Path, members: dict[str, bytes]) -> bytes:
    """A minimal wheel (a zip) holding ``members``; returns its bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return path.read_bytes()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: equal snapshots mean an unchanged store."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
