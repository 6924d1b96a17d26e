"""The real runner process behind the daemon's seam: start, failure reasons, hang detection."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from llmhost.daemon.runners import LoadSpec, ProcessRunnerFactory
from llmhost.errors import RunnerError


def spec_for(path, **kw) -> LoadSpec:
    values = dict(key="k", model_path=path, num_ctx=256, parallel=1, num_batch=64, num_gpu=0, threads=1)
    values.update(kw)
    return LoadSpec(**values)


async def test_runner_starts_and_reports_memory(tmp_path, tiny_gguf):
    runner = await ProcessRunnerFactory(tmp_path, load_timeout=60).start(spec_for(tiny_gguf))
    try:
        assert runner.memory_bytes > 0
        lines = [line async for line in runner.completion({"prompt": "Hello", "options": {"num_predict": 3}})]
        assert lines[-1]["done"] is True and lines[-1]["eval_count"] <= 3
    finally:
        await runner.close()
    assert not runner.alive


async def test_a_file_llama_cpp_rejects_gives_the_runners_reason(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(RunnerError, match="failed to load model: .+"):
        await ProcessRunnerFactory(tmp_path / "s", load_timeout=60).start(spec_for(bad))


async def test_a_runner_that_stops_answering_is_killed(tmp_path, tiny_gguf):
    factory = ProcessRunnerFactory(tmp_path, load_timeout=60, health_interval=0.2, health_misses=2)
    runner = await factory.start(spec_for(tiny_gguf))
    os.kill(runner.pid, signal.SIGSTOP)  # alive but silent, as a deadlocked process would be
    status = await asyncio.wait_for(runner.wait_exited(), 10)
    assert status == -signal.SIGKILL
    await runner.close()
