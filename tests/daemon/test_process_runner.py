"""The real runner process behind the daemon's seam: start, failure reasons, hang detection, spares."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from llmhost.daemon import runner_client as runners
from llmhost.daemon.runner_client import LoadSpec, ProcessRunnerFactory
from llmhost.errors import RunnerError
from tests.support.waiting import eventually


def spec_for(path, **kw) -> LoadSpec:
    values = dict(key="k", model_path=path, num_ctx=256, parallel=1, num_batch=64, num_gpu=0, threads=1)
    values.update(kw)
    return LoadSpec(**values)


@pytest.fixture
async def factory(tmp_path):
    made = ProcessRunnerFactory(tmp_path / "sockets", load_timeout=60)
    yield made
    await made.close()


@pytest.fixture
async def spare_factory(factory):
    """A factory keeping a spare, which has finished importing."""
    factory.keep_spare()
    await ready_spare(factory)
    return factory


async def ready_spare(factory: ProcessRunnerFactory, old_pid: int | None = None) -> int:
    """The pid of a spare (other than ``old_pid``) once it has imported everything."""

    def ready() -> bool:
        spare = factory._spares._spare
        return spare is not None and spare.pid != old_pid and spare.announcement is not None

    await eventually(ready, timeout=30, interval=0.05, what="a spare runner ready")
    return factory._spares._spare.pid


def process_name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def generate(runner, num_predict: int = 3) -> list[dict]:
    return [line async for line in runner.completion({"prompt": "Hello", "options": {"num_predict": num_predict}})]


async def test_runner_starts_and_reports_memory(factory, tiny_gguf):
    runner = await factory.start(spec_for(tiny_gguf))
    try:
        assert runner.memory_bytes > 0
        lines = await generate(runner)
        assert lines[-1]["done"] is True and lines[-1]["eval_count"] <= 3
    finally:
        await runner.close()
    assert not runner.alive


async def test_a_file_llama_cpp_rejects_gives_the_runners_reason(factory, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(RunnerError, match="failed to load model: .+"):
        await factory.start(spec_for(bad))


async def test_a_runner_that_stops_answering_is_killed(tmp_path, tiny_gguf):
    factory = ProcessRunnerFactory(tmp_path, load_timeout=60, health_interval=0.2, health_misses=2)
    runner = await factory.start(spec_for(tiny_gguf))
    os.kill(runner.pid, signal.SIGSTOP)  # alive but silent, as a deadlocked process would be
    status = await asyncio.wait_for(runner.wait_exited(), 10)
    assert status == -signal.SIGKILL
    await runner.close()


async def test_the_spare_takes_the_model_and_a_new_spare_follows(spare_factory, tiny_gguf):
    spare_pid = spare_factory.spare_pid
    assert process_name(spare_pid) == "llmhost-spare"
    runner = await spare_factory.start(spec_for(tiny_gguf))
    try:
        assert runner.pid == spare_pid and process_name(runner.pid) == "llmhost-runner"
        assert (await generate(runner))[-1]["done"] is True
        assert await ready_spare(spare_factory, old_pid=spare_pid) != runner.pid
    finally:
        await runner.close()


async def test_a_load_failure_in_the_spare_gives_the_runners_reason(spare_factory, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(RunnerError, match="failed to load model: .+"):
        await spare_factory.start(spec_for(bad))


async def test_a_spare_running_code_changed_on_disk_is_not_used(spare_factory, tiny_gguf, monkeypatch):
    stale_pid = spare_factory.spare_pid
    monkeypatch.setattr(runners, "_unchanged", lambda announcement: False)
    runner = await spare_factory.start(spec_for(tiny_gguf))
    try:
        assert runner.pid != stale_pid
        assert (await generate(runner))[-1]["done"] is True
        await eventually(lambda: not Path(f"/proc/{stale_pid}").exists() or process_state(stale_pid) == "Z",
                         interval=0.05, what="the stale spare gone")
    finally:
        await runner.close()


async def test_a_spare_that_dies_is_replaced(spare_factory):
    dead_pid = spare_factory.spare_pid
    os.kill(dead_pid, signal.SIGKILL)
    assert await ready_spare(spare_factory, old_pid=dead_pid) != dead_pid


async def test_a_spare_importing_while_requests_run_is_paused(factory, tiny_gguf):
    runner = await factory.start(spec_for(tiny_gguf, num_ctx=4096))
    try:
        lines = runner.completion({"prompt": "Once upon a time", "options": {"num_predict": 3000}})
        await lines.__anext__()  # a request is being served
        factory.keep_spare()
        await eventually(lambda: factory.spare_pid is not None, what="a spare started")
        # Stopped, not importing (a stop signal takes effect when the process next runs).
        await eventually(lambda: process_state(factory.spare_pid) == "T", what="the spare stopped")
        await lines.aclose()
        await ready_spare(factory)  # resumed once no request runs, so it finishes importing
    finally:
        await runner.close()


def test_a_changed_file_makes_an_announcement_stale(tmp_path):
    code = tmp_path / "module.py"
    code.write_text("x = 1\n")
    st = code.stat()
    announcement = {"files": {str(code): [st.st_mtime_ns, st.st_size]}}
    assert runners._unchanged(announcement)
    code.write_text("x = 22\n")
    assert not runners._unchanged(announcement)
    code.unlink()
    assert not runners._unchanged(announcement)


async def test_streams_read_to_their_final_line_keep_one_connection_to_the_runner(factory, tiny_gguf):
    # Routes stop at the final line and close the stream: the end of the runner's chunked body must
    # still be read, or each request pays for a new connection (and a burst reaches the runner late).
    runner = await factory.start(spec_for(tiny_gguf))
    opened = []
    trace = aiohttp.TraceConfig()

    async def on_create(session, context, params):
        opened.append(params)

    trace.on_connection_create_end.append(on_create)
    runner._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(runner._socket_path)),
                                            trace_configs=[trace])
    try:
        for _ in range(3):
            async with contextlib.aclosing(runner.completion({"prompt": "Hello", "options": {"num_predict": 3}})) as lines:
                async for line in lines:
                    if line.get("done"):
                        break
            assert line["done"] is True
        assert len(opened) == 1
    finally:
        await runner.close()
