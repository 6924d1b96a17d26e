"""Memory estimates and GPU layer placement from GGUF metadata."""

from __future__ import annotations

from types import MappingProxyType, SimpleNamespace

import pytest

from llmhost.daemon.gpu import GPU_OVERHEAD, fit_layers
from llmhost.daemon.memory import estimate, kv_cache_bytes

MiB = 1024**2


def model(blocks=10, layer=100 * MiB, output=50 * MiB):
    return SimpleNamespace(block_count=blocks, head_count=8, head_count_kv=2, embedding_length=512,
                           key_length=64, value_length=64, vocab_size=32000,
                           layer_bytes=MappingProxyType(dict.fromkeys(range(blocks), layer)),
                           output_bytes=output, total_tensor_bytes=blocks * layer + output)


def test_kv_cache_follows_the_formula():
    info = model()
    # n_ctx · n_layer · n_head_kv · (head_dim_k + head_dim_v) · 2 bytes
    assert kv_cache_bytes(info, 4096) == 4096 * 10 * 2 * 128 * 2


def test_estimate_grows_with_context_and_parallel():
    info = model()
    small = estimate(info, 2048, 1, 512)
    assert estimate(info, 4096, 1, 512) > small
    assert estimate(info, 2048, 4, 512) - small == pytest.approx(kv_cache_bytes(info, 2048 * 3) + 4 * 32000 * 3)


def test_real_model_estimate_covers_weights_and_kv(smollm2_path):
    from llmhost.registry.gguf_meta import read_gguf_info

    info = read_gguf_info(smollm2_path)
    total = estimate(info, 2048, 4, 512)
    assert info.total_tensor_bytes + kv_cache_bytes(info, 8192) < total < 2 * (info.total_tensor_bytes + kv_cache_bytes(info, 8192))


@pytest.mark.parametrize("free_mib, layers", [
    (0, 0),                     # no GPU memory: CPU only
    (300, 0),                   # cannot hold overhead + scratch + two layers: not worth using
    (256 + 4 + 2 * 101 + 5, 2),  # two layers fit (placed from the last block down)
    (256 + 4 + 10 * 101 + 10, 10),  # all blocks, but not the output layer
    (4096, 11),                 # everything, output layer included
])
def test_gpu_layers_fit_free_vram(free_mib, layers):
    info = model()
    assert fit_layers(info, 256, 1, 512, free_mib * MiB) == layers
    assert 256 * MiB == GPU_OVERHEAD
