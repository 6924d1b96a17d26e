"""Memory estimate of a runner before it is started, from GGUF metadata (no llama.cpp involved).

    total = weights + repacked weights + KV cache + compute scratch + batch + output logits + vocabulary
            + runtime overhead

- weights: the tensor bytes of the file (mmapped; on CPU every page is touched by the first decode);
- repacked weights: with llama.cpp's repacked CPU kernels (``engine.cpu``) the Q4_0, Q4_K, IQ4_NL
  and Q2_K matrices are also copied into anonymous memory at load, while their pages of the mapping
  stay resident too (measured: RSS grows by exactly the repack buffer); without mmap they are read
  into the repack buffer alone, so nothing is added;
- KV cache: n_ctx · n_parallel · n_layer · n_head_kv · (head_dim_k + head_dim_v) · bytes per element
  (f16 2, q8_0 34/32, q4_0 18/32: blocks of 32 values with an f16 scale);
- compute scratch: llama.cpp's graph buffers for one ubatch, a few activations of width n_embd in f32
  (logits are computed only for the rows that sample, so the vocabulary does not enter here);
- batch: the engine's ``llama_batch`` arrays, 25 bytes a token of n_batch (the n_batch the runner is
  really given, ``runner_client.runner_batch``: at least the sequence count, at most the KV cache);
- output logits: one row of n_vocab floats per parallel sequence;
- vocabulary: llama.cpp keeps every token's text and lookup entries (~160 bytes a token: 40 MiB for
  Gemma 3's 262k tokens);
- runtime overhead: the runner's Python interpreter, libllama, aiohttp, thread pools.

Calibrated against the resident memory of real runners (SmolLM2 135M and Gemma 3 270M at 2k–8k
context, 1–4 parallel; each KV type; repack on and off); `scripts/bench p7`, `kv` and `repack`
re-measure it.
"""

from __future__ import annotations

from pathlib import Path

from llmhost.daemon.runner_client import LoadSpec, runner_batch
from llmhost.engine.cpu import repack_enabled

RUNTIME_OVERHEAD = 64 * 1024**2
BYTES_PER_VOCAB_ENTRY = 160
# Per KV cache type (api.options.KV_CACHE_TYPES), as llama.cpp stores it.
KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
# Weight types llama.cpp repacks on x86 (Q4_0, Q4_K, IQ4_NL with AVX2; Q2_K with AVX-512; checked
# against its "CPU_REPACK model buffer size" log line). Elsewhere it repacks no more than these.
REPACKED_TYPES = frozenset({"Q4_0", "Q4_K", "IQ4_NL", "Q2_K"})
UBATCH = 512
F32 = 4
BATCH_BYTES_PER_TOKEN = 25  # token, position, sequence id, its pointer, id count, logits flag


def _info(path: Path):
    # read_gguf_info keeps the few numbers needed per file (its own small cache): no second cache here.
    from llmhost.registry.gguf_meta import read_gguf_info

    return read_gguf_info(path)


def kv_cache_bytes(info, n_ctx_total: int, kv_cache_type: str = "f16") -> int:
    head_count = max(info.head_count or 1, 1)
    embedding = info.embedding_length or 0
    key_length = info.key_length or embedding // head_count
    value_length = info.value_length or embedding // head_count
    head_count_kv = info.head_count_kv or head_count
    elements = n_ctx_total * (info.block_count or 0) * head_count_kv * (key_length + value_length)
    return int(elements * KV_BYTES_PER_ELEMENT[kv_cache_type])


def repacked_bytes(info) -> int:
    """Weights llama.cpp copies into its repacked CPU layout at load."""
    by_type = getattr(info, "matrix_bytes_by_type", None) or {}
    return sum(n for name, n in by_type.items() if name in REPACKED_TYPES)


def compute_bytes(info, n_batch: int) -> int:
    return F32 * min(n_batch, UBATCH) * 4 * (info.embedding_length or 0)


def estimate(info, num_ctx: int, parallel: int, num_batch: int, kv_cache_type: str = "f16",
             repack: bool = False) -> int:
    """``repack``: the weights are mmapped and llama.cpp repacks some of them (see above)."""
    vocab = info.vocab_size or 0
    return (info.total_tensor_bytes
            + (repacked_bytes(info) if repack else 0)
            + kv_cache_bytes(info, num_ctx * parallel, kv_cache_type)
            + compute_bytes(info, num_batch)
            + BATCH_BYTES_PER_TOKEN * num_batch
            + F32 * vocab * parallel
            + BYTES_PER_VOCAB_ENTRY * vocab
            + RUNTIME_OVERHEAD)


def estimate_for_spec(spec: LoadSpec) -> int:
    repack = spec.use_mmap and repack_enabled(spec.cpu_repack)
    return estimate(_info(spec.model_path), spec.num_ctx, spec.parallel, runner_batch(spec),
                    spec.kv_cache_type, repack)


def auto_gpu_layers_for_spec(spec: LoadSpec) -> int:
    from llmhost.daemon.gpu import auto_gpu_layers

    return auto_gpu_layers(_info(spec.model_path), spec.num_ctx, spec.parallel, runner_batch(spec),
                           spec.kv_cache_type)
