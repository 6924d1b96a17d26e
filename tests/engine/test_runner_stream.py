"""A completion's stream from the runner: once it has started, the engine thread writes each output to
the daemon's connection itself (no event-loop wake-up per token, issue 16), and every way that can go
wrong hands the stream back to the event loop with nothing lost, reordered or leaked."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from llmhost.engine.runner_http import RunnerServer
from llmhost.engine.runner_stream import OutputStream
from llmhost.engine.sequence import Failed, Finished, FinishReason, Output, TextChunk
from tests.support.waiting import eventually, wait_until

URL = "http://runner/completion"
FINISHED = Finished(FinishReason.STOP, 3, 0, 1, 0, 1)
Script = Callable[[OutputStream], None]


class ScriptedEngine:
    """Stands in for the engine: each submitted sequence's outputs come from ``script``, run on a
    thread of its own as the engine thread would."""

    def __init__(self, script: Script):
        self.script = script
        self.cancelled = threading.Event()
        self.finished = threading.Event()  # the script has emitted everything

    def submit(self, seq) -> None:
        def run() -> None:
            try:
                self.script(seq.sink)
            except AssertionError as e:  # end the stream with it, as the engine ends a failed sequence
                seq.sink(Failed(str(e)))
            self.finished.set()

        threading.Thread(target=run, daemon=True).start()

    def cancel(self, seq) -> None:
        self.cancelled.set()

    def expect(self):
        return lambda: None


class Builder:
    def sequence(self, req, sink, cancel):
        return Prepared(sink)


class Prepared:
    def __init__(self, sink):
        self.sink = sink

    def close(self) -> None:
        pass


@pytest.fixture
def deliveries(monkeypatch) -> list[object]:
    """Every output (or hand-back) the event loop received from the engine thread."""
    seen: list[object] = []
    original = OutputStream.deliver

    def deliver(self, output):
        seen.append(output)
        original(self, output)

    monkeypatch.setattr(OutputStream, "deliver", deliver)
    return seen


@contextlib.asynccontextmanager
async def serving(engine: ScriptedEngine, socket_dir: Path) -> AsyncIterator[aiohttp.ClientSession]:
    """The runner's app on a unix socket, as the daemon reaches it, and a session to it."""
    runner = web.AppRunner(RunnerServer(engine, Builder(), None, dict).app(), handler_cancellation=True)
    await runner.setup()
    path = str(socket_dir / "runner.sock")
    await web.UnixSite(runner, path).start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as session:
            yield session
    finally:
        await runner.cleanup()


def texts(lines: list[dict]) -> list[str]:
    return [line["content"] for line in lines if "content" in line]


async def stream_lines(session: aiohttp.ClientSession) -> list[dict]:
    async with session.post(URL, json={"prompt": "x"}) as resp:
        assert resp.status == 200
        return [json.loads(line) async for line in resp.content if line.strip()]


def direct_after_first(outputs: list[Output]) -> Script:
    """The first output through the event loop, then the rest once the stream is written directly."""
    def script(sink: OutputStream) -> None:
        sink(outputs[0])
        wait_until(lambda: sink.direct, what="the stream handed to the engine thread")
        for output in outputs[1:]:
            sink(output)
    return script


async def test_after_the_first_token_the_stream_goes_out_without_the_event_loop(deliveries, tmp_path):
    words = [f"w{i} " for i in range(200)]
    engine = ScriptedEngine(direct_after_first([*map(TextChunk, words), FINISHED]))
    async with serving(engine, tmp_path) as client:
        lines = await stream_lines(client)
        assert texts(lines) == words and lines[-1]["done"] is True and len(lines) == 201
        # The loop saw the first word and the hand-back after the final line: 2 wake-ups, not 201.
        assert len(deliveries) == 2
        # The chunked framing was right: the same connection serves the next request whole.
        engine.finished.clear()
        again = await stream_lines(client)
        assert texts(again) == words and again[-1]["done"] is True
    assert not engine.cancelled.is_set()


async def test_a_daemon_that_stops_reading_never_blocks_the_engine_and_loses_nothing(deliveries, tmp_path):
    blocks = [f"{i:03d}" + "x" * 65_536 for i in range(64)]  # 4 MiB: more than the socket buffers hold
    engine = ScriptedEngine(direct_after_first([TextChunk("first"), *map(TextChunk, blocks), FINISHED]))
    async with serving(engine, tmp_path) as client:
        resp = await client.post(URL, json={"prompt": "x"})
        first = json.loads(await resp.content.readline())
        assert first == {"content": "first"}
        # Nobody reads: the engine thread must still get rid of every output at once (the event
        # loop takes over the writing when the connection's buffer is full).
        await eventually(engine.finished.is_set, what="the engine thread done with its outputs")
        rest = [json.loads(line) async for line in resp.content if line.strip()]
    assert texts(rest) == blocks and rest[-1]["done"] is True
    assert len(deliveries) > 2  # the loop did take the stream back
    assert not engine.cancelled.is_set()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
@pytest.mark.parametrize("engine_goes_on", [False, True], ids=["engine-silent", "engine-writes-on"])
async def test_a_daemon_that_goes_away_cancels_the_sequence_and_leaks_no_descriptor(tmp_path, engine_goes_on):
    client_gone = threading.Event()

    def script(sink: OutputStream) -> None:
        sink(TextChunk("first"))
        wait_until(lambda: sink.direct, what="the stream handed to the engine thread")
        client_gone.wait(5)
        for _ in range(1000 if engine_goes_on else 0):  # as an engine that has not heard of the cancel yet
            if engine.cancelled.is_set():
                return
            sink(TextChunk("more"))
            engine.cancelled.wait(0.005)

    engine = ScriptedEngine(script)
    async with serving(engine, tmp_path) as client:
        before = open_fds()
        resp = await client.post(URL, json={"prompt": "x"})
        assert json.loads(await resp.content.readline()) == {"content": "first"}
        resp.close()  # drops the connection
        client_gone.set()
        await eventually(engine.cancelled.is_set, what="the sequence cancelled")
        # Both ends of the connection and the engine thread's duplicate of it are closed.
        await eventually(lambda: open_fds() == before, what="every descriptor of the stream closed")
