"""Memory estimate of a runner before it is started, from GGUF metadata (no llama.cpp involved).

    total = weights + KV cache + compute graph + runtime overhead

- weights: the tensor bytes of the file (mmapped; on CPU every page is touched by the first decode);
- KV cache: n_ctx · n_parallel · n_layer · n_head_kv · (head_dim_k + head_dim_v) · 2 bytes (f16);
- compute graph: llama.cpp's scratch for one ubatch; the larger of the attention and the logits
  buffers (the v0.9.6 Ollama formula for llama-like models), in f32;
- overhead: the runner's Python interpreter, libllama and its thread pools.
"""

from __future__ import annotations

import functools
from pathlib import Path

from llmhost.daemon.runners import LoadSpec

RUNTIME_OVERHEAD = 96 * 1024**2
KV_BYTES_PER_ELEMENT = 2  # f16 cache
UBATCH = 512


@functools.lru_cache(maxsize=64)
def _info(path: str, mtime: float):
    from llmhost.registry.gguf_meta import read_gguf_info

    return read_gguf_info(Path(path))


def kv_cache_bytes(info, n_ctx_total: int) -> int:
    head_count = max(info.head_count or 1, 1)
    key_length = info.key_length or (info.embedding_length // head_count)
    value_length = info.value_length or (info.embedding_length // head_count)
    head_count_kv = info.head_count_kv or head_count
    return n_ctx_total * info.block_count * head_count_kv * (key_length + value_length) * KV_BYTES_PER_ELEMENT


def graph_bytes(info, n_ctx_total: int, n_batch: int) -> int:
    batch = min(n_batch, UBATCH)
    heads = max(info.head_count or 1, 1)
    attention = 4 * batch * (1 + 4 * info.embedding_length + n_ctx_total * (1 + heads))
    logits = 4 * batch * (info.embedding_length + info.vocab_size)
    return max(attention, logits)


def estimate(info, num_ctx: int, parallel: int, num_batch: int) -> int:
    n_ctx_total = num_ctx * parallel
    return (info.total_tensor_bytes + kv_cache_bytes(info, n_ctx_total)
            + graph_bytes(info, n_ctx_total, num_batch) + RUNTIME_OVERHEAD)


def estimate_for_spec(spec: LoadSpec) -> int:
    path = Path(spec.model_path)
    info = _info(str(path), path.stat().st_mtime)
    return estimate(info, spec.num_ctx, spec.parallel, spec.num_batch)
