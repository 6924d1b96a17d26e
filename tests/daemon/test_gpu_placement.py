"""GPU placement with a faked nvidia-smi: the layers a runner gets, and /api/ps's size_vram."""

from __future__ import annotations

import functools
import os
import shutil
import threading

import pytest

from llmhost.daemon.gpu import GpuProbe, parse_gpus, place, place_for_spec
from llmhost.daemon.memory import kv_cache_bytes
from llmhost.daemon.runner_client import Placement
from llmhost.registry.store import Store
from tests.daemon.fakes import FakeClock, FakeFactory, spec
from tests.daemon.test_memory import model  # GGUF metadata of 10 blocks of 100 MiB
from tests.support.daemon_app import start_app

MiB = 1024**2
ONE_GPU = "0, 24000, 24576\n"  # nvidia-smi --query-gpu=index,memory.free,memory.total (MiB)


def test_nvidia_smis_answer_is_read_in_bytes_and_bad_lines_skipped():
    gpus = parse_gpus("0, 1000, 2000\nnot a gpu\n1, 3000, 4000\n")
    assert [(g.index, g.free, g.total) for g in gpus] == [(0, 1000 * MiB, 2000 * MiB), (1, 3000 * MiB, 4000 * MiB)]
    assert parse_gpus("") == []


def test_a_burst_of_loads_asks_nvidia_smi_once():
    asked = []
    clock = FakeClock()
    probe = GpuProbe(query=lambda: asked.append(1) or ONE_GPU, ttl=2.0, clock=clock)
    threads = [threading.Thread(target=probe.gpus) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(asked) == 1
    clock.advance(2.0)  # free memory changes as models load: a later load asks again
    assert probe.gpus()[0].free == 24000 * MiB and len(asked) == 2


KV_PER_LAYER = kv_cache_bytes(model(), 256) // 10
LAYER = 100 * MiB + KV_PER_LAYER


@pytest.mark.parametrize("num_gpu, free_mib, expected", [
    pytest.param(-1, None, Placement(0, 0), id="no GPU: all on the CPU"),
    pytest.param(5, None, Placement(5, 0), id="no GPU: the layers asked for, no VRAM counted"),
    pytest.param(0, 4096, Placement(0, 0), id="num_gpu 0 on a GPU machine"),
    pytest.param(-1, 256 + 4 + 2 * 101 + 5, Placement(2, 2 * LAYER), id="two layers fit"),
    pytest.param(-1, 4096, Placement(11, 10 * LAYER + 50 * MiB), id="everything fits, output layer too"),
    pytest.param(3, 4096, Placement(3, 3 * LAYER), id="num_gpu 3: the last three blocks"),
])
def test_placement_counts_the_offloaded_layers_weights_and_kv(num_gpu, free_mib, expected):
    gpus = parse_gpus(f"0, {free_mib}, 8192") if free_mib is not None else []
    planned = spec(num_ctx=256, num_gpu=num_gpu, num_batch=512)
    assert place(model(), planned, gpus) == expected


@pytest.fixture
async def gpu_harness(tmp_path, template_store):
    """The daemon over the tiny model; its fake runners are placed as the real ones are, on one GPU
    whose nvidia-smi says 24000 MiB are free."""
    shutil.copytree(template_store, tmp_path / "models", copy_function=os.link)
    factory = FakeFactory(place=functools.partial(place_for_spec, probe=GpuProbe(query=lambda: ONE_GPU)))
    harness = await start_app(Store(tmp_path / "models"), tmp_path / "s.sock", factory=factory)
    yield harness
    await harness.client.close()


async def test_ps_shows_the_gpus_share_of_a_model_placed_on_a_gpu(gpu_harness):
    r = await gpu_harness.client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})
    assert r.status == 200, await r.text()
    [ps] = (await (await gpu_harness.client.get("/api/ps")).json())["models"]
    [runner] = gpu_harness.factory.started
    blocks = gpu_harness.store.load("tiny").info.block_count
    assert runner.placement.gpu_layers == blocks + 1  # the tiny model fits whole
    assert 0 < ps["size_vram"] <= ps["size"]
    assert ps["size"] - ps["size_vram"] == runner.memory_bytes  # the rest is the runner's host memory


async def test_ps_shows_no_vram_without_a_gpu(harness):
    await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})
    [ps] = (await (await harness.client.get("/api/ps")).json())["models"]
    assert ps["size_vram"] == 0 and ps["size"] == harness.factory.started[0].memory_bytes
