"""Load options → the runner a request gets (``DaemonState.load_spec``): the defaults the option table
gives, and ``main_gpu``, which reaches the runner and, changed, starts another one."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from llmhost.daemon.runner_client import LoadSpec, Placement, ProcessRunnerFactory
from tests.daemon.conftest import daemon_state
from tests.daemon.fakes import spec

RECORD = SimpleNamespace(runner_key="sha256:" + "a" * 64, model_path=Path("/models/m.gguf"), projector_path=None)
ENV = {"LLMHOST_CONTEXT_LENGTH": "2048", "LLMHOST_NUM_THREADS": "3", "LLMHOST_KV_CACHE_TYPE": "q8_0"}
DEFAULTS = dict(num_ctx=2048, num_batch=512, num_gpu=-1, main_gpu=0, threads=3, use_mmap=True,
                kv_cache_type="q8_0")
LOADS = {
    "nothing set: settings and the table's defaults": ({}, {}),
    "zero means the default": ({"num_ctx": 0, "num_batch": 0, "num_thread": 0}, {}),
    "zero layers is no GPU, not the default": ({"num_gpu": 0}, {"num_gpu": 0}),
    "each option set": ({"num_ctx": 8192, "num_batch": 64, "num_gpu": 10, "main_gpu": 1, "num_thread": 2,
                         "use_mmap": False, "kv_cache_type": "q4_0"},
                        {"num_ctx": 8192, "num_batch": 64, "num_gpu": 10, "main_gpu": 1, "threads": 2,
                         "use_mmap": False, "kv_cache_type": "q4_0"}),
    "a tiny context is raised to 4": ({"num_ctx": 1}, {"num_ctx": 4}),
    "draft_num_predict changes nothing": ({"draft_num_predict": 8}, {}),
}


@pytest.mark.parametrize("load,expected", LOADS.values(), ids=LOADS.keys())
def test_load_options_and_their_defaults_choose_the_runner(tmp_path, template_store, load, expected):
    state = daemon_state(tmp_path, template_store, ENV)
    try:
        got = state.load_spec(RECORD, load)
    finally:
        state.close()
    assert got == LoadSpec(key=RECORD.runner_key, model_path=RECORD.model_path, parallel=state.settings.num_parallel,
                           cpu_repack=state.settings.cpu_repack, kv_host_cache=-1, **{**DEFAULTS, **expected})


@pytest.mark.parametrize("value, expected", [("auto", -1), ("off", 0), ("0", 0), ("512MiB", 512 * 1024**2)])
def test_the_host_cache_setting_reaches_the_runner_and_a_change_needs_another(tmp_path, template_store, value,
                                                                              expected):
    state = daemon_state(tmp_path, template_store, {**ENV, "LLMHOST_KV_HOST_CACHE": value})
    try:
        got = state.load_spec(RECORD, {})
    finally:
        state.close()
    assert got.kv_host_cache == expected
    other = LoadSpec(**{**got.__dict__, "kv_host_cache": expected + 1})
    assert not got.covers(other), "another host cache size needs another runner"


@pytest.mark.parametrize("flash, kv, expected_kv", [("auto", "q8_0", "q8_0"), ("on", "q4_0", "q4_0"),
                                                   ("off", "q8_0", "f16"), ("off", "f16", "f16")])
def test_flash_attention_reaches_the_runner_and_off_keeps_the_cache_f16(tmp_path, template_store, flash, kv,
                                                                          expected_kv):
    state = daemon_state(tmp_path, template_store, {**ENV, "LLMHOST_FLASH_ATTENTION": flash})
    try:
        got = state.load_spec(RECORD, {"kv_cache_type": kv})
    finally:
        state.close()
    assert (got.flash_attention, got.kv_cache_type) == (flash, expected_kv)
    other = LoadSpec(**{**got.__dict__, "flash_attention": "on" if flash != "on" else "off"})
    assert not got.covers(other), "another flash attention mode needs another runner"


async def generate(harness, model: str = "tiny", **options) -> int:
    r = await harness.client.post("/api/generate", json={"model": model, "prompt": "x", "stream": False,
                                                         "options": options})
    return r.status


async def test_a_request_main_gpu_starts_a_runner_with_it(harness):
    assert await generate(harness) == 200
    assert await generate(harness, main_gpu=0) == 200
    assert len(harness.factory.started) == 1, "0 is the default: the same runner"
    assert await generate(harness, main_gpu=1) == 200
    assert [r.spec.main_gpu for r in harness.factory.started] == [0, 1]
    assert harness.factory.started[0].closed, "the same model on another GPU replaces its runner"


async def test_a_modelfile_main_gpu_is_the_models_default(harness):
    r = await harness.client.post("/api/create", json={"model": "tiny-gpu1", "from": "tiny", "stream": False,
                                                       "parameters": {"main_gpu": 1}})
    assert r.status == 200
    assert await generate(harness, "tiny-gpu1") == 200
    assert await generate(harness, "tiny-gpu1", main_gpu=0) == 200
    assert [r.spec.main_gpu for r in harness.factory.started] == [1, 0]


async def test_a_negative_main_gpu_is_a_400(harness):
    r = await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "x",
                                                         "options": {"main_gpu": -1}})
    assert r.status == 400 and 'option "main_gpu" must be between 0' in (await r.json())["error"]
    assert harness.factory.started == []


def test_a_runner_on_another_gpu_does_not_serve_the_request():
    assert not spec(main_gpu=0).covers(spec(main_gpu=1))
    assert spec(main_gpu=1).covers(spec(main_gpu=1))


def test_the_runner_is_told_its_main_gpu(tmp_path):
    from llmhost.engine.runner import parse_args

    factory = ProcessRunnerFactory(tmp_path / "sockets", load_timeout=60)
    args = factory._args(spec(main_gpu=1, num_gpu=0), tmp_path / "r.sock", Placement())
    assert args[args.index("--main-gpu") + 1] == "1"
    assert parse_args(args).main_gpu == 1


@pytest.mark.timeout(120)
async def test_a_cpu_runner_loads_with_a_main_gpu_it_does_not_have(tmp_path, tiny_gguf):
    """llama.cpp's default (layer) split ignores main_gpu, and a CPU build has no GPU to check it against."""
    factory = ProcessRunnerFactory(tmp_path / "sockets", load_timeout=60)
    try:
        runner = await factory.start(LoadSpec(key="k", model_path=tiny_gguf, num_ctx=256, parallel=1, num_batch=64,
                                              num_gpu=0, threads=1, main_gpu=1))
        assert (await runner.health())["status"] == "ok"
        await runner.close()
    finally:
        await factory.close()
