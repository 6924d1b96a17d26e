"""The daemon over an Ollama store (tests/support/ollama_store.py), and the identity clients check.

Fake runners stand behind the seam: what is checked is what the daemon answers and what it asks a
runner to render (the template as stored, the library layers' system, messages and options).
"""

from __future__ import annotations

import pytest

from llmhost import OLLAMA_API_VERSION, __version__
from tests.daemon.conftest import start_harness
from tests.support.ollama_store import (
    CHATTY_MESSAGES,
    CHATTY_SYSTEM,
    CHATTY_TEMPLATE,
    LEGACY_SYSTEM,
    LEGACY_TEMPLATE,
    LICENSE,
    build_ollama_store,
)


@pytest.fixture(scope="session")
def ollama_root(tmp_path_factory, tiny_gguf):
    root = tmp_path_factory.mktemp("ollama") / "models"
    adapter = root.parent / "adapter.gguf"
    adapter.write_bytes(b"GGUF not really a LoRA")
    build_ollama_store(root, tiny_gguf, adapter=adapter)
    return root


@pytest.fixture
async def daemon(tmp_path, ollama_root):
    harness = await start_harness(tmp_path, ollama_root)
    yield harness
    await harness.client.close()


async def test_root_and_version_answer_as_ollama_does(daemon):
    root = await daemon.client.get("/")
    assert root.status == 200 and await root.text() == "Ollama is running"
    assert root.headers["Content-Type"].startswith("text/plain")
    assert (await daemon.client.head("/")).status == 200
    version = await daemon.client.get("/api/version")
    assert await version.json() == {"version": OLLAMA_API_VERSION, "llmhost": __version__}


async def test_tags_list_the_stores_models(daemon):
    body = await (await daemon.client.get("/api/tags")).json()
    assert sorted(m["name"] for m in body["models"]) == [
        "chatty:latest", "hf.co/someone/tiny-GGUF:Q4_K_M", "legacy:7b", "tuned:latest"]


async def test_show_returns_the_layers_as_stored(daemon):
    shown = await (await daemon.client.post("/api/show", json={"model": "chatty"})).json()
    assert shown["template"] == CHATTY_TEMPLATE and shown["system"] == CHATTY_SYSTEM
    assert shown["license"] == LICENSE and shown["messages"] == CHATTY_MESSAGES
    assert shown["capabilities"] == ["completion", "tools", "thinking"]
    assert shown["parameters"].splitlines() == [
        'num_ctx                        2048', 'stop                           "<|im_start|>"',
        'stop                           "<|im_end|>"', 'temperature                    0.6']
    assert f'TEMPLATE """{CHATTY_TEMPLATE}"""' in shown["modelfile"]
    legacy = await (await daemon.client.post("/api/show", json={"model": "legacy:7b"})).json()
    assert legacy["template"] == LEGACY_TEMPLATE and "messages" not in legacy


async def test_a_chat_gives_the_runner_the_template_and_layers(daemon):
    reply = await daemon.client.post("/api/chat", json={"model": "chatty", "stream": False,
                                                         "messages": [{"role": "user", "content": "Hi there"}]})
    assert reply.status == 200, await reply.text()
    body = daemon.factory.started[0].bodies[0]
    assert body["template"] == CHATTY_TEMPLATE and body["think"] is True
    assert body["options"]["stop"] == ["<|im_start|>", "<|im_end|>"] and body["options"]["temperature"] == 0.6
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("system", CHATTY_SYSTEM), ("user", "Who are you?"), ("assistant", "I am Chatty."), ("user", "Hi there")]


@pytest.mark.parametrize(
    "request_body, system, model_messages",
    [
        pytest.param({"prompt": "Why?"}, CHATTY_SYSTEM, True, id="model-system-and-messages"),
        pytest.param({"prompt": "Why?", "system": ""}, CHATTY_SYSTEM, True, id="empty-system-is-none"),
        pytest.param({"prompt": "Why?", "system": "Mine."}, "Mine.", True, id="own-system"),
        pytest.param({"prompt": "Why?", "context": [1, 2]}, CHATTY_SYSTEM, False, id="context-has-the-messages"),
    ],
)
async def test_generate_builds_ollamas_conversation(daemon, request_body, system, model_messages):
    reply = await daemon.client.post("/api/generate", json={"model": "chatty", "stream": False, **request_body})
    assert reply.status == 200, await reply.text()
    messages = [(m["role"], m["content"]) for m in daemon.factory.started[0].bodies[0]["messages"]]
    expected_middle = [("user", "Who are you?"), ("assistant", "I am Chatty.")] if model_messages else []
    assert messages == [("system", system), *expected_middle, ("user", "Why?")]


async def test_a_requests_go_template_overrides_the_models(daemon):
    override = "{{ .System }}: {{ .Prompt }}"
    reply = await daemon.client.post("/api/generate", json={"model": "legacy:7b", "stream": False,
                                                             "prompt": "Why?", "template": override})
    assert reply.status == 200
    body = daemon.factory.started[0].bodies[0]
    assert body["template"] == override and body["messages"][0] == {"role": "system", "content": LEGACY_SYSTEM}


async def test_a_broken_request_template_is_a_400_with_its_position(daemon):
    reply = await daemon.client.post("/api/generate", json={"model": "legacy:7b", "prompt": "x",
                                                             "template": "{{ .Prompt }}\n{{ if .System }}"})
    assert reply.status == 400
    assert (await reply.json())["error"] == 'invalid Go template "template" at 2:17: unexpected EOF'
    assert daemon.factory.started == [], "refused before any model was loaded"


async def test_a_broken_template_is_refused_at_create(daemon):
    before = daemon.files()
    reply = await daemon.client.post("/api/create", json={"model": "bad", "from": "chatty",
                                                           "template": "{{ range .Messages }}{{ .Nope }"})
    assert reply.status == 400
    assert (await reply.json())["error"].startswith("invalid Go template TEMPLATE at 1:")
    assert daemon.files() == before


async def test_a_model_with_an_adapter_is_refused_clearly(daemon):
    reply = await daemon.client.post("/api/chat", json={"model": "tuned", "messages": [{"role": "user", "content": "x"}]})
    assert reply.status == 400
    assert "LoRA adapter" in (await reply.json())["error"]
    assert daemon.factory.started == []


async def test_copy_and_delete_keep_shared_blobs(daemon):
    assert (await daemon.client.post("/api/copy", json={"source": "chatty", "destination": "mine"})).status == 200
    files = daemon.files()
    assert (await daemon.client.delete("/api/delete", json={"model": "chatty"})).status == 200
    assert [f for f in daemon.files() if f.startswith("blobs/")] == [f for f in files if f.startswith("blobs/")]
    assert (await daemon.client.post("/api/show", json={"model": "mine"})).status == 200
