"""RPC workers as the daemon sees them: how much memory each lends, and which layers go where.

The daemon never loads llama.cpp (a worker that is gone makes ggml abort the process), so it asks
workers through a child process, ``python -m llmhost.engine.rpc probe`` (~0.1 s: it opens libggml
only). A worker serves one client at a time, so while a runner holds it the probe gets no answer
(``WorkerBusy``). Hence the memory estimate, made while the runner a reload replaces still holds
the workers, takes any answer ``WorkerProbe`` already has; the placement, made after eviction,
asks again unless it asked within ``PROBE_TTL``.

``split`` places layers as llama.cpp's layer split does with ``n_gpu_layers = N`` and a
``tensor_split`` of whole layer counts: the last N of [block 0 … block n-1, output] go to the
workers' devices in order, the first c₀ to the first device and so on, the rest stay in the runner.
N is as large as fits, each device's share (weights and KV cache) within its free memory less a
reserve; the layers are spread in proportion to the devices' room, as llama.cpp's default split
(by free memory) would, unless that overfills one, then each device is filled in turn.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmhost.daemon.memory import compute_bytes, gguf_info, kv_cache_bytes
from llmhost.daemon.runner_client import LoadSpec, Placement, RpcShare, runner_batch
from llmhost.errors import ConfigError, RunnerError

if TYPE_CHECKING:
    from llmhost.registry.gguf_meta import GGUFInfo

PROBE_TIMEOUT = 10.0  # seconds for the child to answer about every worker (a busy worker never answers)
PROBE_TTL = 2.0  # seconds an answer is fresh enough for a placement
WORKER_RESERVE = 256 * 1024**2  # per device: the worker process, its buffers, what else the machine runs


@dataclass(frozen=True)
class WorkerDevice:
    """A device a worker lends, with its memory as the worker reported it."""

    server: str
    index: int
    free: int
    total: int


class WorkerBusy(RunnerError):
    """A worker accepted the connection but did not answer: it is serving another client."""


def run_probe(servers: Sequence[str], timeout: float = PROBE_TIMEOUT) -> list[WorkerDevice]:
    """Every device of ``servers``, in order, from the probe child; RunnerError naming the worker
    that is not there (WorkerBusy for one that does not answer)."""
    command = [sys.executable, "-m", "llmhost.engine.rpc", "probe", *servers]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        answered = len(_lines(e.stdout or b""))
        busy = servers[min(answered, len(servers) - 1)]
        raise WorkerBusy(f"failed to load model: RPC worker {busy} accepted the connection but did not answer "
                         f"within {timeout:.0f} s: a worker serves one runner at a time; is another model or "
                         "daemon using it?") from None
    lines = _lines(done.stdout)
    for line in lines:
        if "error" in line:
            raise RunnerError(f"failed to load model: {line['error']}")
    if done.returncode != 0 or len(lines) != len(servers):
        said = [ln for ln in done.stderr.decode(errors="replace").splitlines() if ln.strip()]
        raise RunnerError(f"failed to load model: asking the RPC workers {', '.join(servers)} failed: "
                          f"{said[-1] if said else f'status {done.returncode}'}")
    return [WorkerDevice(d["server"], d["index"], d["free"], d["total"]) for line in lines for d in line["devices"]]


def _lines(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for text in raw.decode(errors="replace").splitlines():
        try:
            value = json.loads(text)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


class WorkerProbe:
    """Workers' devices, asked at most once per ``ttl`` seconds per set of workers (thread-safe)."""

    def __init__(self, ask: Callable[[Sequence[str]], list[WorkerDevice]] = run_probe, ttl: float = PROBE_TTL,
                 clock: Callable[[], float] = time.monotonic):
        self._ask = ask
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._answers: dict[tuple[str, ...], tuple[float, list[WorkerDevice]]] = {}

    def devices(self, servers: tuple[str, ...], *, fresh: bool = True) -> list[WorkerDevice]:
        """Their devices: asked now unless an answer is within ``ttl`` or, without ``fresh``, any
        answer was had (RunnerError naming a worker that is not there or busy)."""
        with self._lock:
            known = self._answers.get(servers)
            if known is not None and (not fresh or self._clock() - known[0] < self._ttl):
                return known[1]
            answer = self._ask(servers)
            self._answers[servers] = (self._clock(), answer)
            return answer


def layer_sizes(info: GGUFInfo, spec: LoadSpec) -> list[int]:
    """Bytes a device holds per layer llama.cpp may offload: each block (weights and its KV cache),
    then the output layer."""
    blocks = info.block_count or 0
    kv = kv_cache_bytes(info, spec.num_ctx * spec.parallel, spec.kv_cache_type) // max(blocks, 1)
    return [info.layer_bytes.get(i, 0) + kv for i in range(blocks)] + [info.output_bytes]


def split(sizes: Sequence[int], room: Sequence[int], most: int | None = None) -> tuple[int, ...]:
    """Layers per device for the last layers of ``sizes`` (see the module's docstring); at most
    ``most`` layers in all (``num_gpu``) when given."""
    top = len(sizes) if most is None or most < 0 else min(most, len(sizes))
    for n in range(top, 0, -1):
        tail = sizes[len(sizes) - n:]
        counts = _proportional(tail, room) or _in_turn(tail, room)
        if counts is not None:
            return counts
    return tuple(0 for _ in room)


def _proportional(tail: Sequence[int], room: Sequence[int]) -> tuple[int, ...] | None:
    total_room = sum(room)
    if total_room <= 0:
        return None
    counts, before, start = [], 0, 0
    for r in room:
        before += r
        end = round(len(tail) * before / total_room)
        if sum(tail[start:end]) > r:
            return None
        counts.append(end - start)
        start = end
    return tuple(counts)


def _in_turn(tail: Sequence[int], room: Sequence[int]) -> tuple[int, ...] | None:
    counts, i = [], 0
    for r in room:
        used, start = 0, i
        while i < len(tail) and used + tail[i] <= r:
            used += tail[i]
            i += 1
        counts.append(i - start)
    return tuple(counts) if i == len(tail) else None


def place(info: GGUFInfo, spec: LoadSpec, devices: Sequence[WorkerDevice]) -> Placement:
    """What goes to each worker device, as a ``Placement`` (``gpu_layers`` is llama.cpp's
    n_gpu_layers: the RPC devices are the only ones an RPC runner offloads to)."""
    sizes = layer_sizes(info, spec)
    reserve = WORKER_RESERVE + compute_bytes(info, runner_batch(spec))
    counts = split(sizes, [max(0, d.free - reserve) for d in devices], spec.num_gpu)
    shares: dict[str, list[int]] = {}
    start = len(sizes) - sum(counts)
    for device, count in zip(devices, counts):
        held = sum(sizes[start:start + count])
        start += count
        layers, bytes_ = shares.setdefault(device.server, [0, 0])
        shares[device.server] = [layers + count, bytes_ + held]
    return Placement(gpu_layers=sum(counts), rpc_layers=counts,
                     rpc=tuple(RpcShare(server, n, b) for server, (n, b) in shares.items()))


def check_rpc_build() -> None:
    """ConfigError saying how to rebuild unless the installed llama.cpp has the RPC backend (asked in a
    child process, as every question about workers is)."""
    done = subprocess.run([sys.executable, "-m", "llmhost.engine.rpc", "check"], capture_output=True,
                          timeout=PROBE_TIMEOUT)
    if done.returncode != 0:
        said = (done.stdout or done.stderr).decode(errors="replace").strip() or f"status {done.returncode}"
        raise ConfigError(f"LLMHOST_RPC_SERVERS is set, but {said}")


def freed_here(info: GGUFInfo, placement: Placement) -> int:
    """What the workers' layers take off this machine: their bytes, but for the output layer's
    embedding matrix, which the runner keeps for its input when the model ties the two (the worker
    then holds a copy). Untied, the input embedding is what is left outside the blocks and the output
    layer; tied, nothing is, so at most that much of the output layer leaves."""
    held = sum(share.bytes for share in placement.rpc)
    if not placement.gpu_layers:  # any offload includes the output layer, the last of llama.cpp's
        return held
    outside = info.total_tensor_bytes - sum(info.layer_bytes.values()) - info.output_bytes
    return held - info.output_bytes + max(0, min(info.output_bytes, outside))


_probe = WorkerProbe()  # one per daemon process: its answers are about the workers, not a setting


def place_on_workers(spec: LoadSpec, *, fresh: bool = True, probe: WorkerProbe | None = None) -> Placement:
    """``place`` for the model of ``spec`` and its workers as they answer now (blocking: run it on a
    thread). ``fresh=False`` (the memory estimate) takes any answer already had."""
    devices = (probe or _probe).devices(spec.rpc_servers, fresh=fresh)
    return place(gguf_info(spec.model_path), spec, devices)
