"""Memory estimate of a runner before it is started, from GGUF metadata (no llama.cpp involved).

    total = weights + repacked weights + KV cache + compute scratch + batch + output logits + vocabulary
            + runtime overhead + parked prompts (+ projector, for a vision model)

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
- runtime overhead: the runner's Python interpreter, libllama, aiohttp, thread pools;
- parked prompts: the host memory idle cached prompts may take once moved out of the KV cache
  (``engine.kv_host``, ``LLMHOST_KV_HOST_CACHE``; by default as much as the KV cache, at most 1 GiB);
- projector (a vision model's ``--mmproj``): see ``projector_bytes``.

Calibrated against the resident memory of real runners (SmolLM2 135M and Gemma 3 270M at 2k–8k
context, 1–4 parallel; each KV type; repack on and off); `scripts/bench p7`, `kv` and `repack`
re-measure it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llmhost.daemon.runner_client import LoadSpec, runner_batch
from llmhost.engine.cpu import repack_enabled

if TYPE_CHECKING:  # imported when needed: it brings numpy and gguf
    from llmhost.registry.gguf_meta import GGUFInfo

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
HOST_CACHE_AUTO_MAX = 1024**3  # LLMHOST_KV_HOST_CACHE=auto's cap
PROJECTOR_COMPUTE_FALLBACK = 128 * 1024**2  # a projector's image scratch when its metadata lacks the sizes


def gguf_info(path: Path) -> GGUFInfo:
    """The GGUF metadata the estimate and the GPU placement need (blocking: reads the file)."""
    # read_gguf_info keeps the few numbers needed per file (its own small cache): no second cache here.
    from llmhost.registry.gguf_meta import read_gguf_info

    return read_gguf_info(path)


def kv_cache_bytes(info: GGUFInfo, n_ctx_total: int, kv_cache_type: str = "f16") -> int:
    head_count = max(info.head_count or 1, 1)
    embedding = info.embedding_length or 0
    key_length = info.key_length or embedding // head_count
    value_length = info.value_length or embedding // head_count
    head_count_kv = info.head_count_kv or head_count
    elements = n_ctx_total * (info.block_count or 0) * head_count_kv * (key_length + value_length)
    return int(elements * KV_BYTES_PER_ELEMENT[kv_cache_type])


def repacked_bytes(info: GGUFInfo) -> int:
    """Weights llama.cpp copies into its repacked CPU layout at load."""
    by_type = getattr(info, "matrix_bytes_by_type", None) or {}
    return sum(n for name, n in by_type.items() if name in REPACKED_TYPES)


def compute_bytes(info: GGUFInfo, n_batch: int) -> int:
    return F32 * min(n_batch, UBATCH) * 4 * (info.embedding_length or 0)


def attention_scores_bytes(info: GGUFInfo, n_ctx_total: int, n_batch: int) -> int:
    """Without flash attention, llama.cpp's compute buffer holds a ubatch's attention scores over the
    whole KV pool (f32, one matrix per head, reused layer to layer); flash attention needs none."""
    return F32 * n_ctx_total * min(n_batch, UBATCH) * max(info.head_count or 1, 1)


def estimate(info: GGUFInfo, num_ctx: int, parallel: int, num_batch: int, kv_cache_type: str = "f16",
             repack: bool = False, flash_attention: str = "auto") -> int:
    """``repack``: the weights are mmapped and llama.cpp repacks some of them (see above);
    ``flash_attention`` "off" adds the attention scores ("auto" is on where llama.cpp has it)."""
    vocab = info.vocab_size or 0
    scores = attention_scores_bytes(info, num_ctx * parallel, num_batch) if flash_attention == "off" else 0
    return (info.total_tensor_bytes
            + scores
            + (repacked_bytes(info) if repack else 0)
            + kv_cache_bytes(info, num_ctx * parallel, kv_cache_type)
            + compute_bytes(info, num_batch)
            + BATCH_BYTES_PER_TOKEN * num_batch
            + F32 * vocab * parallel
            + BYTES_PER_VOCAB_ENTRY * vocab
            + RUNTIME_OVERHEAD)


def projector_bytes(info: GGUFInfo) -> int:
    """A projector's share: its weights plus the compute buffer its encoder needs for one image.

    Assumed, not yet measured (no small real vision model is on the package index to calibrate with):
    llama.cpp's clip reads the weights into its own buffers (no mmap), so all of them are resident;
    the compute buffer is sized for the largest image the encoder takes — one attention-score matrix
    (heads × patches² f32, patches = (image_size / patch_size)²) and the widest activations per patch
    (4 × width + feed-forward width, f32); ``PROJECTOR_COMPUTE_FALLBACK`` when the file lacks those
    ``clip.vision.*`` sizes. For Gemma 3's encoder (896 px, 14 px patches, 16 heads) that is ~1.1 GiB.
    """
    meta = info.metadata

    def vision(key: str) -> int:
        value = meta.get(f"clip.vision.{key}")
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    side = vision("image_size") // vision("patch_size") if vision("patch_size") else 0
    patches, heads = side * side, vision("attention.head_count")
    width = 4 * vision("embedding_length") + vision("feed_forward_length")
    compute = F32 * (heads * patches * patches + patches * width) if patches and heads else 0
    return info.total_tensor_bytes + (compute or PROJECTOR_COMPUTE_FALLBACK)


def estimate_for_spec(spec: LoadSpec) -> int:
    """``estimate`` for the model file of ``spec``, and its projector (blocking: residency runs it on a thread)."""
    repack = spec.use_mmap and repack_enabled(spec.cpu_repack)
    total = estimate(gguf_info(spec.model_path), spec.num_ctx, spec.parallel, runner_batch(spec),
                     spec.kv_cache_type, repack, spec.flash_attention)
    total -= rpc_offloaded_bytes(spec)
    total += host_cache_bytes(spec)
    return total + (projector_bytes(gguf_info(spec.projector)) if spec.projector is not None else 0)


def host_cache_bytes(spec: LoadSpec) -> int:
    """Host memory the runner may park idle prompts in: LLMHOST_KV_HOST_CACHE's size, or for auto
    (-1) the size of its KV cache up to ``HOST_CACHE_AUTO_MAX``: a long-context runner's cache can be
    tens of GiB, and a budget that large would keep models out that fit before."""
    if spec.kv_host_cache >= 0:
        return spec.kv_host_cache
    kv = kv_cache_bytes(gguf_info(spec.model_path), spec.num_ctx * spec.parallel, spec.kv_cache_type)
    return min(kv, HOST_CACHE_AUTO_MAX)


def rpc_offloaded_bytes(spec: LoadSpec) -> int:
    """What RPC workers will hold instead of this machine: the weights and KV cache of the layers placed
    on them by their free memory (``daemon/workers.py``; asks them, or takes their last answer)."""
    if not spec.rpc_servers:
        return 0
    from llmhost.daemon.workers import freed_here, place_on_workers  # it imports this module

    return freed_here(gguf_info(spec.model_path), place_on_workers(spec, fresh=False))

