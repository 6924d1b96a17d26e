"""Bounded admission per model: ``num_parallel`` running + ``LLMHOST_MAX_QUEUE`` waiting, the rest 503 at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmhost.daemon.residency import ModelIdentity, Residency
from llmhost.errors import ServerBusy
from tests.daemon.conftest import start_harness
from tests.daemon.fakes import FakeFactory, spec
from tests.support.waiting import eventually

PARALLEL, QUEUE = 1, 2
BUSY = "server busy, please try again.  maximum pending requests exceeded"  # Ollama's text


@pytest.fixture
async def small(tmp_path, template_store):
    """A daemon whose models take 1 running and 2 waiting requests; the fake runner holds every
    stream after its first line until ``factory.gate`` is set."""
    harness = await start_harness(tmp_path, template_store, {"LLMHOST_NUM_PARALLEL": str(PARALLEL)}, max_queue=QUEUE)
    harness.factory.gate = asyncio.Event()
    yield harness
    harness.factory.gate.set()
    await harness.client.close()


async def generate(harness, **body):
    """Status and first line (or error body) of a streamed generate."""
    r = await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "x", **body})
    if r.status != 200:
        return r.status, await r.json(), r
    return r.status, await r.content.readline(), r


async def load(harness) -> None:
    r = await harness.client.post("/api/generate", json={"model": "tiny"})
    assert r.status == 200 and (await r.json())["done_reason"] == "load"


async def test_a_resident_model_admits_parallel_plus_queue_and_refuses_the_rest_at_once(small):
    await load(small)
    started = time.monotonic()
    results = await asyncio.gather(*(generate(small) for _ in range(12)))
    elapsed = time.monotonic() - started
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200] * (PARALLEL + QUEUE) + [503] * (12 - PARALLEL - QUEUE)
    assert elapsed < 0.5, f"the refusals took {elapsed:.2f}s"
    assert all(body == {"error": BUSY} for status, body, _ in results if status == 503)
    [runner] = small.factory.started
    assert len(runner.bodies) == PARALLEL + QUEUE, "a refused request never reaches the runner"
    small.factory.gate.set()
    for status, _, response in results:
        if status == 200:
            assert b'"done": true' in await response.read()
    assert small.residency.admitted(runner.spec.key) == 0


async def test_requests_waiting_for_a_load_are_bounded_too_and_share_one_load(small):
    small.factory.load_delay = 1.0
    started = time.monotonic()
    tasks = [asyncio.create_task(generate(small)) for _ in range(12)]
    done, _ = await asyncio.wait(tasks, timeout=0.5)
    assert len(done) == 12 - PARALLEL - QUEUE, "the refusals come before the load finishes"
    assert all(task.result()[0] == 503 for task in done) and time.monotonic() - started < 0.9
    results = await asyncio.gather(*tasks)
    assert sorted(status for status, _, _ in results).count(200) == PARALLEL + QUEUE
    assert len(small.factory.started) == 1


@pytest.mark.parametrize("path, body, check", [
    pytest.param("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                          "stream": True},
                 lambda e: e["error"]["message"] == BUSY, id="openai-error-shape"),
    pytest.param("/v1/messages", {"model": "tiny", "max_tokens": 8, "stream": True,
                                  "messages": [{"role": "user", "content": "x"}]},
                 lambda e: e["type"] == "error" and e["error"]["type"] == "overloaded_error", id="anthropic-shape"),
])
async def test_each_protocol_answers_busy_in_its_own_shape(small, path, body, check):
    await load(small)
    held = [await generate(small) for _ in range(PARALLEL + QUEUE)]
    assert [status for status, _, _ in held] == [200] * (PARALLEL + QUEUE)
    r = await small.client.post(path, json=body)
    assert r.status == 503 and check(await r.json())


async def test_a_client_that_leaves_while_waiting_frees_its_place_at_once(small):
    await load(small)
    held = [await generate(small) for _ in range(PARALLEL + QUEUE)]
    assert (await generate(small))[0] == 503
    held[-1][2].close()  # the last one waiting goes away
    key = small.factory.started[0].spec.key
    await eventually(lambda: small.residency.admitted(key) < PARALLEL + QUEUE, what="its place freed")
    status, _, _ = await generate(small)
    assert status == 200, "the place it held is free again"


async def test_places_are_per_model_and_a_load_only_request_counts_too():
    factory = FakeFactory(gate=asyncio.Event())
    residency = Residency(factory, max_loaded=3, max_queue=QUEUE, memory_budget=1 << 30)
    a, b = spec("sha256:" + "a" * 64, parallel=PARALLEL), spec("sha256:" + "b" * 64, parallel=PARALLEL)
    leases = [await residency.acquire(a, ModelIdentity("a"), 300.0) for _ in range(PARALLEL + QUEUE)]
    with pytest.raises(ServerBusy):
        await residency.acquire(a, ModelIdentity("a"), 300.0)
    other = await residency.acquire(b, ModelIdentity("b"), 300.0)  # another model has its own places
    leases[0].release()
    leases[0].release()  # a second release is harmless and frees nothing more
    leases.append(await residency.acquire(a, ModelIdentity("a"), 300.0))
    with pytest.raises(ServerBusy):
        await residency.acquire(a, ModelIdentity("a"), 300.0)
    for lease in [*leases, other]:
        lease.release()
    assert residency.admissions() == []
