"""A cold load's slow steps (reading GGUF metadata, asking nvidia-smi) leave the event loop free."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from llmhost.daemon.residency import ModelIdentity, Residency
from llmhost.daemon.runner_client import LoadSpec, Placement, ProcessRunnerFactory
from tests.daemon.fakes import FakeFactory, spec

SLOW = 0.3  # seconds a slow step takes


async def ticks_during(work) -> tuple[int, object]:
    """How many 10 ms ticks the event loop ran while ``work`` was awaited, and its result."""
    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        result = await work
    finally:
        ticker.cancel()
    return ticks, result


def slow_estimate(planned: LoadSpec) -> int:
    time.sleep(SLOW)  # as a GGUF read from a cold disk would
    return 100


async def test_the_memory_estimate_does_not_block_other_requests():
    residency = Residency(FakeFactory(), max_loaded=3, max_queue=4, memory_budget=1000, estimate=slow_estimate)
    ticks, lease = await ticks_during(residency.acquire(spec(), ModelIdentity("a"), 300.0))
    lease.release()
    assert ticks >= 10, "the loop was stalled while the estimate ran"
    await residency.shutdown()


async def test_gpu_placement_runs_beside_the_loop_and_reaches_the_runner(tmp_path, tiny_gguf):
    placement = Placement(gpu_layers=3, vram_bytes=12345)

    def slow_place(planned: LoadSpec) -> Placement:
        time.sleep(SLOW)  # as nvidia-smi on a busy GPU would
        return placement

    factory = ProcessRunnerFactory(tmp_path / "sockets", load_timeout=60, place=slow_place)
    planned = LoadSpec(key="k", model_path=tiny_gguf, num_ctx=256, parallel=1, num_batch=64, num_gpu=-1, threads=1)
    ticks, runner = await ticks_during(factory.start(planned))
    try:
        assert ticks >= 10, "the loop was stalled while the placement ran"
        assert runner.vram_bytes == 12345
        args = Path(f"/proc/{runner.pid}/cmdline").read_bytes().decode().split("\0")
        assert args[args.index("--gpu-layers") + 1] == "3"  # a CPU build of llama.cpp ignores it
        assert args[args.index("--parent-pid") + 1] == str(os.getpid())
    finally:
        await runner.close()
        await factory.close()
