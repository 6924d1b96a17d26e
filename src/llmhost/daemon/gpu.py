"""GPU offload: how many layers of a model fit in free VRAM.

The daemon does not link CUDA; it asks ``nvidia-smi`` for free memory (no GPU, no tool → CPU only)
and places layers the way Ollama's v0.9.6 estimator did: a GPU is usable only if it can hold the
compute scratch, the output layer and a couple of layers; layers are then offloaded from the last
block down until the next one would not fit. The first model may be split between CPU and GPU;
what is not offloaded runs (and is budgeted) on the CPU.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

from llmhost.daemon.memory import compute_bytes, kv_cache_bytes

GPU_OVERHEAD = 256 * 1024**2  # CUDA context and cuBLAS workspaces


@dataclass(frozen=True)
class Gpu:
    index: int
    free: int
    total: int


def detect_gpus() -> list[Gpu]:
    """NVIDIA GPUs with their free memory, or [] when there is none (or no nvidia-smi)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        out = subprocess.run([tool, "--query-gpu=index,memory.free,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        try:
            index, free, total = (int(part.strip()) for part in line.split(","))
        except ValueError:
            continue
        gpus.append(Gpu(index, free * 1024**2, total * 1024**2))
    return gpus


def fit_layers(info, num_ctx: int, parallel: int, num_batch: int, free_vram: int,
               kv_cache_type: str = "f16") -> int:
    """Layers to offload (``n_gpu_layers``); block_count + 1 means everything, output layer included."""
    blocks = info.block_count or 0
    if blocks == 0:
        return 0
    kv_per_layer = kv_cache_bytes(info, num_ctx * parallel, kv_cache_type) // blocks
    layers = [info.layer_bytes.get(i, 0) + kv_per_layer for i in range(blocks)]
    fixed = GPU_OVERHEAD + compute_bytes(info, num_batch)
    largest = max(layers)
    if free_vram < fixed + 2 * largest:
        return 0
    room = free_vram - fixed
    placed = 0
    for size in reversed(layers):
        if size > room:
            break
        room -= size
        placed += 1
    if placed == blocks and info.output_bytes <= room:
        placed += 1
    return placed


def auto_gpu_layers(info, num_ctx: int, parallel: int, num_batch: int, kv_cache_type: str = "f16") -> int:
    """``n_gpu_layers`` for ``num_gpu = -1``: what fits on the GPU with the most free memory now."""
    gpus = detect_gpus()
    if not gpus:
        return 0
    best = max(gpus, key=lambda g: g.free)
    return fit_layers(info, num_ctx, parallel, num_batch, best.free, kv_cache_type)
