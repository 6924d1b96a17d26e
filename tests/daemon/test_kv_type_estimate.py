"""KV cache type and repacked CPU kernels on the daemon's side: settings, the load option, which runner
a request gets, and the memory estimate that follows both."""

from __future__ import annotations

from types import MappingProxyType, SimpleNamespace

import pytest

from llmhost.daemon import memory
from llmhost.daemon.memory import estimate, estimate_for_spec, kv_cache_bytes
from llmhost.daemon.runner_client import LoadSpec, ProcessRunner, ProcessRunnerFactory
from llmhost.errors import RunnerError
from tests.daemon.conftest import start_harness
from tests.daemon.fakes import spec

MiB = 1024**2


def model(**matrices: int):
    return SimpleNamespace(block_count=10, head_count=8, head_count_kv=2, embedding_length=512,
                           key_length=64, value_length=64, vocab_size=32000, total_tensor_bytes=500 * MiB,
                           matrix_bytes_by_type=MappingProxyType(matrices))


# --- estimate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kv, bytes_per_element", [("f16", 2), ("q8_0", 34 / 32), ("q4_0", 18 / 32)])
def test_kv_cache_bytes_follow_the_type(kv, bytes_per_element):
    # n_ctx · n_layer · n_head_kv · (head_dim_k + head_dim_v) · bytes per element
    assert kv_cache_bytes(model(), 4096, kv) == 4096 * 10 * 2 * 128 * bytes_per_element


def test_a_quantized_cache_lowers_the_estimate_by_exactly_what_it_saves():
    info = model()
    f16, q8 = estimate(info, 4096, 4, 512), estimate(info, 4096, 4, 512, "q8_0")
    assert f16 - q8 == kv_cache_bytes(info, 16384) - kv_cache_bytes(info, 16384, "q8_0")
    # 4 parallel × 4096 of this model: 80 MiB of f16 cache, 42.5 MiB in q8_0, 22.5 MiB in q4_0
    assert (kv_cache_bytes(info, 16384) / MiB, kv_cache_bytes(info, 16384, "q4_0") / MiB) == (80, 22.5)


def test_repacking_adds_the_matrices_llama_cpp_copies():
    """Repacked weights live in anonymous memory while their mapped pages stay resident too."""
    info = model(Q4_0=50 * MiB, Q4_K=10 * MiB, Q6_K=5 * MiB, Q4_1=7 * MiB, Q8_0=3 * MiB)
    assert estimate(info, 2048, 1, 512, repack=True) - estimate(info, 2048, 1, 512) == 60 * MiB


@pytest.mark.parametrize("host_cache, extra", [
    (-1, 80 * MiB),  # auto: as large as the KV cache (4 × 4096 f16 cells of this model)
    (0, 0),
    (512 * MiB, 512 * MiB),
])
def test_the_estimate_bounds_what_parked_prompts_may_take(monkeypatch, host_cache, extra):
    info = model()
    monkeypatch.setattr(memory, "gguf_info", lambda path: info)
    planned = spec(num_ctx=4096, parallel=4, cpu_repack="off", kv_host_cache=host_cache)
    assert estimate_for_spec(planned) == estimate(info, 4096, 4, 512) + extra


def test_auto_caps_the_parked_prompt_budget_at_a_gibibyte(monkeypatch):
    info = model()
    monkeypatch.setattr(memory, "gguf_info", lambda path: info)
    long = spec(num_ctx=131072, parallel=4, cpu_repack="off", kv_host_cache=-1)  # a 2.5 GiB KV cache
    assert estimate_for_spec(long) == estimate(info, 131072, 4, 512) + 1024 * MiB


@pytest.mark.parametrize("cpu_repack, use_mmap, extra", [
    ("on", True, 60 * MiB),
    ("off", True, 0),
    ("on", False, 0),  # read into the repack buffer alone: no second copy
])
def test_the_estimate_counts_repacked_weights_only_when_the_runner_repacks_a_mapping(
        monkeypatch, cpu_repack, use_mmap, extra):
    info = model(Q4_0=50 * MiB, Q4_K=10 * MiB)
    monkeypatch.setattr(memory, "gguf_info", lambda path: info)
    planned = spec(num_ctx=2048, parallel=1, cpu_repack=cpu_repack, use_mmap=use_mmap)
    assert estimate_for_spec(planned) == estimate(info, 2048, 1, 512) + extra


def test_gguf_info_lists_the_bytes_of_matmul_weights_by_type(smollm2_path):
    """SmolLM2 Q4_1: its blocks' matrices; not the Q8_0 token embedding (a row lookup) nor the norms."""
    from llmhost.registry.gguf_meta import read_gguf_info

    by_type = read_gguf_info(smollm2_path).matrix_bytes_by_type
    assert set(by_type) == {"Q4_1"} and 60 * MiB < by_type["Q4_1"] < 70 * MiB


# --- which runner a request gets --------------------------------------------------------------------


async def generate(harness, model: str = "tiny", **options) -> int:
    r = await harness.client.post("/api/generate", json={"model": model, "prompt": "x", "stream": False,
                                                         "options": options})
    return r.status


async def test_the_daemon_default_a_modelfile_and_a_request_each_choose_the_cache(tmp_path, template_store):
    harness = await start_harness(tmp_path, template_store, {"LLMHOST_KV_CACHE_TYPE": "q8_0"})
    try:
        r = await harness.client.post("/api/create", json={"model": "tiny-q4", "from": "tiny", "stream": False,
                                                           "parameters": {"kv_cache_type": "q4_0"}})
        assert r.status == 200
        assert await generate(harness) == 200
        assert await generate(harness, "tiny-q4") == 200
        assert await generate(harness, "tiny-q4", kv_cache_type="f16") == 200
        show = await (await harness.client.post("/api/show", json={"model": "tiny-q4"})).json()
    finally:
        await harness.client.close()
    assert [r.spec.kv_cache_type for r in harness.factory.started] == ["q8_0", "q4_0", "f16"]
    assert 'kv_cache_type                  "q4_0"' in show["parameters"]


async def test_changing_the_cache_type_reloads_and_a_bad_one_is_a_400(harness):
    assert await generate(harness) == 200
    assert await generate(harness, kv_cache_type="f16") == 200
    assert len(harness.factory.started) == 1, "f16 is the default: same runner"
    r = await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "x",
                                                         "options": {"kv_cache_type": "q3"}})
    assert r.status == 400 and "must be one of f16, q8_0, q4_0" in (await r.json())["error"]
    assert await generate(harness, kv_cache_type="q8_0") == 200
    assert len(harness.factory.started) == 2 and harness.factory.started[0].closed


def test_a_runner_for_another_cache_type_does_not_serve_the_request():
    assert not spec(kv_cache_type="f16").covers(spec(kv_cache_type="q8_0"))
    assert spec(kv_cache_type="q8_0", num_ctx=4096).covers(spec(kv_cache_type="q8_0", num_ctx=2048))


async def test_a_model_whose_heads_a_quantized_cache_cannot_hold_fails_to_load_clearly(tmp_path, tiny_gguf):
    """The tiny model's heads hold 16 values; q8_0 stores blocks of 32. The real runner says so."""
    factory = ProcessRunnerFactory(tmp_path / "sockets", load_timeout=60)
    try:
        with pytest.raises(RunnerError, match=r"q8_0 KV cache.*head size divisible by 32; f16 needs neither"):
            await factory.start(LoadSpec(key="k", model_path=tiny_gguf, num_ctx=256, parallel=1, num_batch=64,
                                         num_gpu=0, threads=1, kv_cache_type="q8_0"))
    finally:
        await factory.close()


@pytest.mark.model
async def test_a_runner_with_a_q8_0_cache_holds_less_memory(tmp_path, smollm2_path):
    factory = ProcessRunnerFactory(tmp_path / "sockets", load_timeout=60)
    resident = {}
    try:
        for kv in ("f16", "q8_0"):
            runner = await factory.start(LoadSpec(key=kv, model_path=smollm2_path, num_ctx=4096, parallel=4,
                                                  num_batch=512, num_gpu=0, threads=1, kv_cache_type=kv))
            health = await runner.health()
            resident[kv] = runner.memory_bytes
            await runner.close()
            assert health["kv_cache_type"] == kv
    finally:
        await factory.close()
    # 4 × 4096 cells of SmolLM2: 360 MiB of f16, 191.25 MiB of q8_0 (pages of the cache are touched at
    # creation, as llama.cpp clears it)
    assert resident["f16"] - resident["q8_0"] > 150 * MiB


@pytest.mark.parametrize("health, reserve", [
    ({}, 300),  # no /health yet: all of it
    ({"engine": {"parked_bytes": 100}}, 200),
    ({"engine": {"parked_bytes": 500}}, 0),
])
def test_a_runner_reserves_what_its_parked_prompts_may_still_take(health, reserve):
    runner = SimpleNamespace(host_cache_bytes=300, last_health=health)
    assert ProcessRunner.host_cache_reserve.fget(runner) == reserve  # type: ignore[attr-defined]
