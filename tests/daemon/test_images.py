"""Images on the native API: validated at the door, refused for a model without vision before anything
loads, carried to the runner (per message, or top-level for a raw prompt), which is started with the
model's projector; ``show`` and ``ps`` account for the projector."""

from __future__ import annotations

import base64
import dataclasses
import io
import json

import pytest

from llmhost.daemon.memory import estimate_for_spec, gguf_info, projector_bytes
from llmhost.daemon.runner_client import Placement, ProcessRunnerFactory
from llmhost.registry.create import create_model
from tests.daemon.fakes import spec
from tests.support.tiny_mmproj import write_tiny_mmproj

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(24)).decode()  # the runner checks what an image holds
NOT_VISION = "registry.ollama.ai/library/tiny:latest does not support vision"


async def post(harness, path: str, body: dict):
    data = io.BytesIO(json.dumps({"stream": False, **body}).encode())  # a stream: aiohttp warns of large bytes
    r = await harness.client.post(path, data=data, headers={"Content-Type": "application/json"})
    return r.status, await r.json()


def chat(model: str, *messages: dict) -> dict:
    return {"model": model, "messages": list(messages) or [{"role": "user", "content": "what is this?",
                                                             "images": [PNG]}]}


async def test_a_chat_image_reaches_the_runner_started_with_the_projector(harness, seer):
    status, answer = await post(harness, "/api/chat", chat("seer"))
    assert status == 200, answer
    [runner] = harness.factory.started
    assert runner.spec.projector == seer.projector_path
    assert runner.spec.num_ctx >= 2048, "Ollama's floor for a model with a projector"
    assert runner.bodies[-1]["messages"][-1] == {"role": "user", "content": "what is this?", "images": [PNG]}


async def test_images_sent_with_line_breaks_reach_the_runner_without_them(harness, seer):
    wrapped = "\n".join(PNG[i:i + 8] for i in range(0, len(PNG), 8))  # base64.encodebytes-style lines
    status, _ = await post(harness, "/api/chat", chat("seer", {"role": "user", "content": "?", "images": [wrapped]}))
    assert status == 200 and harness.factory.started[0].bodies[-1]["messages"][-1]["images"] == [PNG]


async def test_the_official_ollama_client_sends_images_we_take(harness, seer, ollama_client):
    png = base64.b64decode(PNG)
    await ollama_client.chat(model="seer", messages=[{"role": "user", "content": "?", "images": [png]}])
    await ollama_client.generate(model="seer", prompt="?", images=[png])
    chat_body, generate_body = harness.factory.started[0].bodies
    assert chat_body["messages"][-1]["images"] == generate_body["messages"][-1]["images"] == [PNG]


@pytest.mark.parametrize("raw, where", [(False, "message"), (True, "top level")])
async def test_a_generate_image_goes_with_the_prompt(harness, seer, raw, where):
    status, answer = await post(harness, "/api/generate", {"model": "seer", "prompt": "what is [img]?",
                                                          "images": [PNG], "raw": raw})
    assert status == 200, answer
    body = harness.factory.started[0].bodies[-1]
    if raw:  # a prompt-style request: the runner places them by the prompt's [img] markers
        assert (body["prompt"], body["images"]) == ("what is [img]?", [PNG])
    else:
        assert body["messages"][-1] == {"role": "user", "content": "what is [img]?", "images": [PNG]}


@pytest.mark.parametrize("path, body", [
    ("/api/chat", chat("tiny")),
    ("/api/generate", {"model": "tiny", "prompt": "what is this?", "images": [PNG]}),
], ids=["chat", "generate"])
async def test_images_for_a_model_without_vision_are_refused_before_it_loads(harness, path, body):
    assert await post(harness, path, body) == (400, {"error": NOT_VISION})
    assert harness.factory.started == []


def message_with(images) -> dict:
    return chat("seer", {"role": "user", "content": "hi"}, {"role": "user", "content": "?", "images": images})


BAD = {
    "not an array": (message_with(PNG), 'invalid message at index 1: "images" must be an array of '
                                        "base64-encoded images"),
    "not a string": (message_with([PNG, 7]), "invalid message at index 1: images[1] must be a string (the "
                                             "image's bytes, base64-encoded)"),
    "not base64": (message_with(["not base64!"]), "invalid message at index 1: images[0] is not valid base64; "
                                                  "send the image's bytes base64-encoded"),
    "a data URL": (message_with(["data:image/png;base64," + PNG]),
                   'images[0] is not valid base64; send the image\'s bytes base64-encoded without its '
                   '"data:…;base64," prefix'),
    "empty": (message_with([""]), "invalid message at index 1: images[0] is empty"),
    "generate: not base64": ({"model": "seer", "prompt": "?", "images": ["%%%"]},
                             'invalid value for "images": images[0] is not valid base64'),
    "too many in one message": (message_with([PNG] * 17), "too many images: 17 in this request (at most 16)"),
    "too many in all": (chat("seer", *[{"role": "user", "content": "?", "images": [PNG] * 6}] * 3),
                        "too many images: 18 in this request (at most 16)"),
}


@pytest.mark.parametrize("body, message", BAD.values(), ids=BAD.keys())
async def test_malformed_images_are_400s_naming_the_index(harness, seer, body, message):
    path = "/api/generate" if "prompt" in body else "/api/chat"
    status, answer = await post(harness, path, body)
    assert status == 400 and message in answer["error"]
    assert harness.factory.started == []


async def test_image_sizes_are_bounded_one_by_one_and_together(harness, seer, monkeypatch):
    import llmhost.api.types as types

    monkeypatch.setattr(types, "MAX_IMAGE_BYTES", 1 << 20)
    monkeypatch.setattr(types, "MAX_IMAGES_BYTES", 2 << 20)
    big = base64.b64encode(bytes(3 << 19)).decode()
    status, answer = await post(harness, "/api/chat", message_with([PNG, big]))
    assert (status, answer["error"]) == (400, "invalid message at index 1: images[1] is 1.5 MiB decoded, more "
                                              "than the limit of 1 MiB per image")
    mib = base64.b64encode(bytes(1 << 20)).decode()
    status, answer = await post(harness, "/api/chat", message_with([mib, mib, PNG]))
    assert (status, answer["error"]) == (400, "images too large: 2.0 MiB decoded in this request (at most 2 MiB)")
    assert harness.factory.started == []


async def test_show_lists_vision_and_the_projectors_metadata(harness, seer):
    status, shown = await post(harness, "/api/show", {"model": "seer"})
    assert status == 200 and shown["capabilities"] == ["completion", "vision"]
    info = shown["projector_info"]
    assert info["general.architecture"] == "clip" and info["clip.vision.image_size"] == 32
    assert f"\nFROM {seer.projector_path}\n" in shown["modelfile"]
    status, plain = await post(harness, "/api/show", {"model": "tiny"})
    assert "projector_info" not in plain and "vision" not in plain["capabilities"]


async def test_ps_size_counts_the_projector(harness, seer):
    harness.factory.memory[seer.runner_key] = 0  # no memory report from the runner: the estimate stands
    assert (await post(harness, "/api/generate", {"model": "seer", "prompt": "hi"}))[0] == 200
    [runner] = harness.factory.started
    r = await harness.client.get("/api/ps")
    [entry] = (await r.json())["models"]
    text_only = dataclasses.replace(runner.spec, projector=None)
    added = projector_bytes(gguf_info(seer.projector_path))
    assert entry["size"] == estimate_for_spec(runner.spec) == estimate_for_spec(text_only) + added
    assert added > seer.projector_path.stat().st_size, "the weights and the image's compute buffer"


async def test_the_vision_runner_serves_the_text_only_copy_but_not_the_reverse(harness, seer):
    assert (await post(harness, "/api/generate", {"model": "tiny", "prompt": "hi"}))[0] == 200
    assert (await post(harness, "/api/chat", chat("seer")))[0] == 200
    first, second = harness.factory.started
    assert (first.spec.projector, second.spec.projector) == (None, seer.projector_path)
    assert first.closed, "a runner without the projector cannot see: replaced"
    assert (await post(harness, "/api/generate", {"model": "tiny", "prompt": "hi"}))[0] == 200
    assert len(harness.factory.started) == 2 and second.bodies[-1]["messages"][-1]["content"] == "hi"


def test_a_projector_is_part_of_the_load_key(tmp_path):
    assert spec(projector=tmp_path / "p").covers(spec())
    assert not spec().covers(spec(projector=tmp_path / "p"))
    assert not spec(projector=tmp_path / "p").covers(spec(projector=tmp_path / "q"))


def test_the_runner_is_given_the_projector(tmp_path):
    from llmhost.engine.runner import parse_args

    factory = ProcessRunnerFactory(tmp_path / "sockets", load_timeout=60)
    args = factory._args(spec(projector=tmp_path / "mmproj.gguf"), tmp_path / "r.sock", Placement())
    assert parse_args(args).mmproj == str(tmp_path / "mmproj.gguf")
    assert "--mmproj" not in factory._args(spec(), tmp_path / "r.sock", Placement())


@pytest.mark.timeout(120)
async def test_a_real_runner_reads_the_image_through_the_projector(tmp_path, tiny_gguf):
    """The whole seam with llama.cpp: the tiny model and a tiny projector (16 positions an image)."""
    from llmhost.registry.store import Store
    from tests.support.daemon_app import app_state, serve
    from tests.support.tiny_mmproj import png

    store = Store(tmp_path / "models")
    model = store.import_file(tiny_gguf)[0]
    projector = store.import_file(write_tiny_mmproj(tmp_path / "mmproj.gguf"))[0]
    create_model(store, "seer", files={"tiny.gguf": model, "mmproj.gguf": projector})
    factory = ProcessRunnerFactory(tmp_path / "sockets", load_timeout=60)
    harness = await serve(app_state(store, tmp_path / "s.sock", factory=factory))

    async def ask(*images: str):
        message = {"role": "user", "content": "what is it?", "images": list(images)}
        return await post(harness, "/api/chat", {"model": "seer", "messages": [message],
                                                 "options": {"temperature": 0, "num_predict": 2}})
    try:
        (seen_status, seen), (text_status, text) = await ask(base64.b64encode(png(40, 30)).decode()), await ask()
        assert (seen_status, text_status) == (200, 200), (seen, text)
        assert seen["prompt_eval_count"] - text["prompt_eval_count"] >= 16, "the image's positions were evaluated"
        status, refused = await ask(base64.b64encode(b"GIF89a not really").decode())
        assert status == 400 and refused["error"], "the runner's own check of what an image holds"
    finally:
        await harness.client.close()
        await factory.close()
