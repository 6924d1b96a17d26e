"""GPU offload: how many layers of a model go to the GPU, and how many bytes that puts there.

The daemon does not link CUDA; it asks ``nvidia-smi`` for free memory (no GPU, no tool → CPU only)
and places layers the way Ollama's v0.9.6 estimator did: a GPU is usable only if it can hold the
compute scratch, the output layer and a couple of layers; layers are then offloaded from the last
block down until the next one would not fit. The first model may be split between CPU and GPU;
what is not offloaded runs (and is budgeted) on the CPU.

``GpuProbe`` remembers nvidia-smi's answer for a couple of seconds, so a burst of loads asks once;
``place_for_spec`` reads GGUF metadata and may run nvidia-smi, so the daemon calls it on a thread.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmhost.daemon.memory import compute_bytes, gguf_info, kv_cache_bytes
from llmhost.daemon.runner_client import LoadSpec, Placement, runner_batch

if TYPE_CHECKING:
    from llmhost.registry.gguf_meta import GGUFInfo

GPU_OVERHEAD = 256 * 1024**2  # CUDA context and cuBLAS workspaces
PROBE_TTL = 2.0  # seconds an nvidia-smi answer is reused
NVIDIA_SMI_TIMEOUT = 10


@dataclass(frozen=True)
class Gpu:
    index: int
    free: int
    total: int


def parse_gpus(csv: str) -> list[Gpu]:
    """``nvidia-smi --query-gpu=index,memory.free,memory.total --format=csv,noheader,nounits`` (MiB)."""
    gpus = []
    for line in csv.strip().splitlines():
        try:
            index, free, total = (int(part.strip()) for part in line.split(","))
        except ValueError:
            continue
        gpus.append(Gpu(index, free * 1024**2, total * 1024**2))
    return gpus


def query_nvidia_smi() -> str:
    """nvidia-smi's answer about every GPU, or "" when there is none (or no nvidia-smi)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return ""
    try:
        return subprocess.run([tool, "--query-gpu=index,memory.free,memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


class GpuProbe:
    """NVIDIA GPUs and their free memory, asked at most once per ``ttl`` seconds (thread-safe).

    ``query`` is the tool's answer (tests give a canned one); free memory changes as models load,
    so the answer is kept only long enough to serve a burst of loads.
    """

    def __init__(self, query: Callable[[], str] = query_nvidia_smi, ttl: float = PROBE_TTL,
                 clock: Callable[[], float] = time.monotonic):
        self._query = query
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._answer: list[Gpu] | None = None
        self._asked = 0.0

    def gpus(self) -> list[Gpu]:
        with self._lock:  # a second caller waits for the first one's answer instead of asking again
            now = self._clock()
            if self._answer is None or now - self._asked >= self._ttl:
                self._answer, self._asked = parse_gpus(self._query()), now
            return self._answer


def _layer_sizes(info: GGUFInfo, num_ctx: int, parallel: int, kv_cache_type: str) -> list[int]:
    """Bytes each block takes on the GPU: its weights and its share of the KV cache."""
    blocks = info.block_count or 0
    kv_per_layer = kv_cache_bytes(info, num_ctx * parallel, kv_cache_type) // blocks
    return [info.layer_bytes.get(i, 0) + kv_per_layer for i in range(blocks)]


def _offloaded_bytes(info: GGUFInfo, layers: list[int], gpu_layers: int) -> int:
    """What ``n_gpu_layers = gpu_layers`` puts on the GPU: the last blocks, then the output layer."""
    placed = min(gpu_layers, len(layers))
    return sum(layers[len(layers) - placed:]) + (info.output_bytes if gpu_layers > len(layers) else 0)


def fit_layers(info: GGUFInfo, num_ctx: int, parallel: int, num_batch: int, free_vram: int,
               kv_cache_type: str = "f16") -> int:
    """Layers to offload (``n_gpu_layers``); block_count + 1 means everything, output layer included."""
    if not info.block_count:
        return 0
    layers = _layer_sizes(info, num_ctx, parallel, kv_cache_type)
    fixed = GPU_OVERHEAD + compute_bytes(info, num_batch)
    if free_vram < fixed + 2 * max(layers):
        return 0
    room = free_vram - fixed
    placed = 0
    for size in reversed(layers):
        if size > room:
            break
        room -= size
        placed += 1
    if placed == len(layers) and info.output_bytes <= room:
        placed += 1
    return placed


def place(info: GGUFInfo, spec: LoadSpec, gpus: list[Gpu]) -> Placement:
    """The layers ``spec`` offloads (its ``num_gpu``, or for -1 what fits the GPU with the most free
    memory) and the bytes of weights and KV cache they hold there (none without a GPU)."""
    if spec.num_gpu >= 0:
        gpu_layers = spec.num_gpu
    elif gpus:
        best = max(gpus, key=lambda g: g.free)
        gpu_layers = fit_layers(info, spec.num_ctx, spec.parallel, runner_batch(spec), best.free, spec.kv_cache_type)
    else:
        gpu_layers = 0
    if not gpus or not info.block_count or gpu_layers == 0:
        return Placement(gpu_layers)
    layers = _layer_sizes(info, spec.num_ctx, spec.parallel, spec.kv_cache_type)
    return Placement(gpu_layers, _offloaded_bytes(info, layers, gpu_layers))


def place_for_spec(spec: LoadSpec, probe: GpuProbe) -> Placement:
    """``place`` for the model file of ``spec`` and the GPUs as ``probe`` sees them (blocking: run it
    on a thread)."""
    if spec.num_gpu == 0:
        return Placement()  # CPU asked for: neither the file nor nvidia-smi need asking
    return place(gguf_info(spec.model_path), spec, probe.gpus())
