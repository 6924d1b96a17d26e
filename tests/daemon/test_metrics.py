"""/metrics (parsed with prometheus_client's own parser), /health, tokenize/detokenize, ps usage fields."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmhost import __version__
from llmhost.daemon.state import STATE_KEY
from tests.daemon.conftest import start_harness
from tests.support.waiting import eventually

MODEL = "tiny:latest"


async def scrape(harness) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    r = await harness.client.get("/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(await r.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def counters(samples) -> dict:
    return {key: v for key, v in samples.items() if key[0].endswith(("_total", "_count", "_bucket"))
            and not key[0].startswith("process_")}


async def stream(harness, path="/api/generate", **body) -> list[dict]:
    body = {"model": "tiny", "prompt": "x", **body}
    r = await harness.client.post(path, json=body)
    assert r.status == 200
    return [json.loads(line) for line in (await r.read()).splitlines() if line.strip()]


async def test_counters_move_consistently_while_requests_run(harness):
    harness.factory.words = ["a", "b", "c", "d"]
    await stream(harness)  # loads the model
    runner = harness.factory.started[0]
    runner.cached = 2  # from now on 2 of the 7 prompt tokens come from the KV cache
    runner.gate, runner.gate_at = asyncio.Event(), 2  # streams pause after two tokens
    seen = [await scrape(harness)]
    gaps = value(seen[0], "llmhost_inter_token_latency_seconds_count", model=MODEL)
    tasks = [asyncio.create_task(stream(harness, options={"seed": i})) for i in range(8)]
    while value(seen[-1], "llmhost_inter_token_latency_seconds_count", model=MODEL) < gaps + 8:
        seen.append(await scrape(harness))
    middle = await scrape(harness)  # every request is held between its second and third token
    seen.append(middle)
    assert value(middle, "llmhost_requests_admitted", model=MODEL) == 8
    assert value(middle, "llmhost_running_sequences", model=MODEL) == 4  # the fake's parallel (the default 4)
    assert value(middle, "llmhost_time_to_first_token_seconds_count", model=MODEL) == 1 + 8
    assert value(middle, "llmhost_completions_total", model=MODEL, reason="stop") == 1  # the first one only
    runner.gate.set()
    while not all(t.done() for t in tasks):
        seen.append(await scrape(harness))
        await asyncio.sleep(0)
    finals = [lines[-1] for lines in [await t for t in tasks]]
    seen.append(await scrape(harness))
    for before, after in itertools.pairwise(seen):  # no counter ever goes back
        assert all(after.get(key, 0) >= v for key, v in counters(before).items())
    last, first = seen[-1], seen[0]

    def moved(name, **labels):
        return value(last, name, **labels) - value(first, name, **labels)

    assert moved("llmhost_prompt_tokens_evaluated_total", model=MODEL) == 8 * 5
    assert moved("llmhost_prompt_tokens_cached_total", model=MODEL) == 8 * 2
    assert (moved("llmhost_prompt_tokens_evaluated_total", model=MODEL)
            + moved("llmhost_prompt_tokens_cached_total", model=MODEL)) == sum(f["prompt_eval_count"] for f in finals)
    assert moved("llmhost_generated_tokens_total", model=MODEL) == sum(f["eval_count"] for f in finals) == 32
    assert moved("llmhost_completions_total", model=MODEL, reason="stop") == 8
    assert moved("llmhost_time_to_first_token_seconds_count", model=MODEL) == 8
    assert moved("llmhost_inter_token_latency_seconds_count", model=MODEL) == 8 * 3
    assert value(last, "llmhost_requests_total", method="POST", route="/api/generate", status="200") == 9
    assert value(last, "llmhost_requests_admitted", model=MODEL) == 0


async def test_gauges_show_running_and_waiting_while_requests_are_held(tmp_path, template_store):
    harness = await start_harness(tmp_path, template_store, {"LLMHOST_NUM_PARALLEL": "2"}, max_queue=4)
    try:
        harness.factory.gate = asyncio.Event()
        responses = [await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "x"})
                     for _ in range(3)]
        for r in responses:
            await r.content.readline()  # the first line has arrived: each is inside the runner
        samples = await scrape(harness)
        assert value(samples, "llmhost_running_sequences", model=MODEL) == 2
        assert value(samples, "llmhost_waiting_sequences", model=MODEL) == 1
        assert value(samples, "llmhost_requests_admitted", model=MODEL) == 3
        assert value(samples, "llmhost_requests_queued", model=MODEL) == 1
        assert value(samples, "llmhost_kv_cells", model=MODEL) == 1024
        assert value(samples, "llmhost_kv_cells_used", model=MODEL) == 15
        assert value(samples, "llmhost_parked_prompt_bytes", model=MODEL) == 2048
        assert value(samples, "llmhost_parked_prompts", model=MODEL) == 1
        assert value(samples, "llmhost_prompts_parked_total", model=MODEL) == 3
        assert value(samples, "llmhost_parked_prompts_restored_total", model=MODEL) == 2
        assert value(samples, "llmhost_time_to_first_token_seconds_count", model=MODEL) == 3
        health = await (await harness.client.get("/health")).json()
        assert health["requests_in_flight"] == 3 and health["queue_depth"] == 1
        [ps] = (await (await harness.client.get("/api/ps")).json())["models"]
        assert (ps["parallel"], ps["slots_in_use"], ps["queue_depth"]) == (2, 2, 1)
        harness.factory.gate.set()
        for r in responses:
            await r.read()
    finally:
        await harness.client.close()


async def test_residency_and_memory_metrics(harness):
    await stream(harness)
    samples = await scrape(harness)
    assert value(samples, "llmhost_model_loads_total", model=MODEL) == 1
    assert value(samples, "llmhost_model_load_duration_seconds_count", model=MODEL) == 1
    assert value(samples, "llmhost_loaded_models") == 1
    assert value(samples, "llmhost_resident_bytes", model=MODEL) == 100  # what the fake runner declares
    assert value(samples, "llmhost_memory_budget_bytes") == 8 << 30
    harness.factory.started[0].crash()
    await eventually(lambda: harness.residency.residents() == [], what="the crashed runner forgotten")
    await stream(harness)
    samples = await scrape(harness)
    assert value(samples, "llmhost_runner_crashes_total", model=MODEL) == 1
    assert value(samples, "llmhost_runner_restarts_total", model=MODEL) == 1
    assert value(samples, "llmhost_model_loads_total", model=MODEL) == 2
    assert ("llmhost_pull_bytes_total", ()) in samples
    assert value(samples, "llmhost_build_info", version=__version__) == 1


async def test_failed_completions_refusals_and_unmatched_routes_are_counted(harness):
    harness.factory.words = ["a", {"error": "the model runner stopped"}]
    lines = await stream(harness)
    assert lines[-1] == {"error": "the model runner stopped"}
    await harness.client.get("/no/such/path")
    await harness.client.post("/api/generate", json={"model": "missing", "prompt": "x"})
    samples = await scrape(harness)
    assert value(samples, "llmhost_completions_total", model=MODEL, reason="error") == 1
    assert value(samples, "llmhost_requests_total", method="GET", route="unmatched", status="404") == 1
    assert value(samples, "llmhost_requests_total", method="POST", route="/api/generate", status="404") == 1
    assert not any(labels and dict(labels).get("model") == "missing" for _, labels in samples)


async def test_each_app_has_its_own_registry(harness, tmp_path, template_store):
    other = await start_harness(tmp_path / "other", template_store)
    try:
        await stream(harness)
        assert value(await scrape(other), "llmhost_requests_total", method="POST", route="/api/generate",
                     status="200") == 0
    finally:
        await other.client.close()


async def test_health_is_200_while_serving_and_503_while_shutting_down(harness):
    await stream(harness)
    r = await harness.client.get("/health")
    body = await r.json()
    assert r.status == 200 and body["status"] == "ok"
    assert body["models"] == [MODEL] and body["queue_depth"] == 0 and body["uptime_seconds"] >= 0
    assert body["version"]
    harness.client.server.app[STATE_KEY].shutting_down = True
    r = await harness.client.get("/health")
    assert r.status == 503 and (await r.json())["status"] == "shutting down"


async def test_tokenize_and_detokenize_through_the_runner(harness):
    r = await harness.client.post("/api/tokenize", json={"model": "tiny", "content": "hé"})
    assert r.status == 200 and await r.json() == {"model": MODEL, "tokens": [104, 233]}
    assert len(harness.factory.started) == 1, "the model is loaded as generate loads it"
    r = await harness.client.post("/api/tokenize", json={"model": "tiny", "content": "hé", "pieces": True})
    assert (await r.json())["pieces"] == ["h", "é"]
    r = await harness.client.post("/api/detokenize", json={"model": "tiny", "tokens": [104, 233]})
    assert await r.json() == {"model": MODEL, "content": "hé"}


@pytest.mark.parametrize("path, body, status, message", [
    ("/api/tokenize", {"model": "tiny"}, 400, '"content" is required'),
    ("/api/tokenize", {"model": "tiny", "content": 3}, 400, 'invalid value for "content"'),
    ("/api/detokenize", {"model": "tiny", "tokens": ["a"]}, 400, 'invalid value for "tokens"'),
    ("/api/detokenize", {"model": "tiny", "tokens": [-1]}, 400, 'invalid value for "tokens"'),
    ("/api/detokenize", {"model": "tiny"}, 400, 'invalid value for "tokens"'),
    ("/api/tokenize", {"model": "missing", "content": "x"}, 404, "not found"),
])
async def test_tokenize_errors(harness, path, body, status, message):
    r = await harness.client.post(path, json=body)
    assert r.status == status and message in (await r.json())["error"]
    assert harness.factory.started == [], "nothing is loaded for a bad request"


async def test_ps_shows_the_cache_hit_rate(harness):
    await stream(harness)
    harness.factory.started[0].cached = 15
    await stream(harness)
    [ps] = (await (await harness.client.get("/api/ps")).json())["models"]
    assert ps["cache_hit_rate"] == pytest.approx(15 / (5 + 5 + 15), abs=1e-4)
    assert (ps["slots_in_use"], ps["queue_depth"]) == (0, 0)
