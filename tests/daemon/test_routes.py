"""Ollama's native routes against a real store and fake runners."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.support.waiting import eventually


async def ndjson(response) -> list[dict]:
    return [json.loads(line) for line in (await response.text()).splitlines() if line.strip()]


async def test_root_and_version(harness):
    r = await harness.client.get("/")
    assert r.status == 200 and "running" in await r.text()
    r = await harness.client.get("/api/version")
    assert (await r.json())["version"]


async def test_tags_lists_the_model_with_details(harness):
    models = (await (await harness.client.get("/api/tags")).json())["models"]
    assert [m["name"] for m in models] == ["tiny:latest"]
    assert models[0]["details"]["format"] == "gguf"
    assert models[0]["details"]["family"] == "llama"
    assert len(models[0]["digest"]) == 64 and models[0]["size"] > 0


async def test_show_reports_template_system_and_parameters(harness):
    r = await harness.client.post("/api/show", json={"model": "TINY"})
    body = await r.json()
    assert r.status == 200
    assert "<|im_start|>" in body["template"]
    assert body["system"] == "You are tiny."
    assert "temperature" in body["parameters"]
    assert body["model_info"]["general.architecture"] == "llama"
    assert "FROM" in body["modelfile"]


async def test_generate_streams_chunks_and_final_metrics(harness):
    r = await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "hi"})
    lines = await ndjson(r)
    assert r.headers["Content-Type"].startswith("application/x-ndjson")
    assert "".join(line.get("response", "") for line in lines) == "Hello, world"
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                "eval_count", "eval_duration"):
        assert isinstance(final[key], int), key
    body = harness.factory.started[0].bodies[0]
    assert body["messages"] == [{"role": "system", "content": "You are tiny."},
                                {"role": "user", "content": "hi"}]
    assert body["options"]["temperature"] == 0.5, "Modelfile parameter reaches the runner"


async def test_chat_non_streaming_returns_one_object(harness):
    r = await harness.client.post("/api/chat", json={
        "model": "tiny", "stream": False, "options": {"temperature": 0},
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]})
    body = await r.json()
    assert body["message"] == {"role": "assistant", "content": "Hello, world"}
    assert body["done"] is True
    sent = harness.factory.started[0].bodies[0]
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}, "request system wins"
    assert sent["options"]["temperature"] == 0


async def test_raw_generate_sends_prompt_unchanged(harness):
    await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "<x>", "raw": True})
    assert harness.factory.started[0].bodies[0]["prompt"] == "<x>"


async def test_empty_prompt_loads_and_keep_alive_zero_unloads(harness):
    r = await harness.client.post("/api/generate", json={"model": "tiny"})
    assert (await r.json())["done_reason"] == "load"
    ps = (await (await harness.client.get("/api/ps")).json())["models"]
    assert [m["name"] for m in ps] == ["tiny:latest"] and ps[0]["expires_at"]
    r = await harness.client.post("/api/generate", json={"model": "tiny", "keep_alive": 0})
    assert (await r.json())["done_reason"] == "unload"
    assert (await (await harness.client.get("/api/ps")).json())["models"] == []


async def test_runner_crash_mid_stream_ends_with_error_line_and_next_request_works(harness):
    import asyncio

    harness.factory.gate = asyncio.Event()
    task = asyncio.create_task(harness.client.post("/api/generate", json={"model": "tiny", "prompt": "hi"}))
    await eventually(lambda: harness.factory.started, what="a runner started")
    harness.factory.started[0].crash()
    harness.factory.gate.set()
    lines = await ndjson(await task)
    assert lines[-1] == {"error": "model runner crashed (signal 9)"}
    harness.factory.gate = None
    r = await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "again", "stream": False})
    assert (await r.json())["response"] == "Hello, world"
    assert len(harness.factory.started) == 2


async def test_copy_then_delete_keeps_shared_blobs(harness):
    r = await harness.client.post("/api/copy", json={"source": "tiny", "destination": "other:v1"})
    assert r.status == 200
    names = [m["name"] for m in (await (await harness.client.get("/api/tags")).json())["models"]]
    assert sorted(names) == ["other:v1", "tiny:latest"]
    r = await harness.client.delete("/api/delete", json={"model": "tiny"})
    assert r.status == 200
    r = await harness.client.post("/api/show", json={"model": "other:v1"})
    assert r.status == 200, "the copy still works after the original is deleted"


async def test_blob_upload_verifies_digest(harness):
    data = b"some bytes"
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    bad = "sha256:" + hashlib.sha256(b"other").hexdigest()
    before = harness.files()
    r = await harness.client.post(f"/api/blobs/{bad}", data=data)
    assert r.status == 400 and "digest mismatch" in (await r.json())["error"]
    assert harness.files() == before, "nothing half-written"
    assert (await harness.client.head(f"/api/blobs/{good}")).status == 404
    assert (await harness.client.post(f"/api/blobs/{good}", data=data)).status == 201
    assert (await harness.client.head(f"/api/blobs/{good}")).status == 200


@pytest.mark.parametrize("path, body, status, message", [
    ("/api/generate", {"model": "nope", "prompt": "x"}, 404, "not found"),
    ("/api/chat", {"model": "tiny", "messages": "hi"}, 400, "messages"),
    ("/api/generate", {"model": "tiny", "prompt": 5}, 400, "prompt"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"temperature": "hot"}}, 400,
     'option "temperature" must be of type float'),
    ("/api/generate", {"model": "tiny", "prompt": "x", "keep_alive": "5 minutes"}, 400, "duration"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "format": "yaml"}, 400, "invalid format"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "raw": True, "system": "s"}, 400, "raw mode"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "context": [1, "two"]}, 400, "context"),
    ("/api/generate", {"model": "tiny", "prompt": "x", "raw": True, "context": [1]}, 400, "raw mode"),
    ("/api/generate", {"model": "../x", "prompt": "x"}, 400, "invalid"),
    ("/api/show", {"model": "a/b/c/d/e"}, 400, "invalid"),
    ("/api/show", {"model": "x" * 81}, 400, "invalid"),
    ("/api/show", {}, 400, "model is required"),
    ("/api/copy", {"source": "nope", "destination": "x"}, 404, "not found"),
    ("/api/delete", {"model": "nope"}, 404, "not found"),
    ("/api/create", {"model": "m", "files": {"m.gguf": "sha256:../../etc"}}, 400, "digest"),
    ("/api/create", {"model": "m", "files": {"../m.gguf": "sha256:" + "0" * 64}}, 400, "relative"),
    ("/api/create", {"model": "m", "from": "tiny", "draft_files": {"d.gguf": "sha256:" + "0" * 64}}, 400,
     "DRAFT models are not supported yet: llmhost drafts by prompt lookup"),
    ("/api/create", {"model": "m", "from": "tiny", "draft_quantize": "q4_K_M"}, 400, "draft_num_predict"),
])
async def test_bad_input_gets_clear_error_and_store_unchanged(harness, path, body, status, message):
    before = harness.files()
    method = harness.client.delete if path == "/api/delete" else harness.client.post
    r = await method(path, json=body)
    assert r.status == status
    assert message.lower() in (await r.json())["error"].lower()
    assert harness.files() == before


@pytest.mark.parametrize("raw, message", [(b"", "missing request body"), (b"{nope", "invalid JSON"),
                                          (b"[1]", "JSON object")])
async def test_body_that_is_not_a_json_object(harness, raw, message):
    r = await harness.client.post("/api/chat", data=raw)
    assert r.status == 400 and message in (await r.json())["error"]


@pytest.mark.parametrize("digest", ["sha256:abc", "sha256:" + "G" * 64, "md5:" + "0" * 64, "sha256-..%2F..%2Fx"])
async def test_malformed_blob_digest_is_400(harness, digest):
    assert (await harness.client.head(f"/api/blobs/{digest}")).status == 400


async def test_copies_of_a_model_share_one_runner(harness):
    await harness.client.post("/api/copy", json={"source": "tiny", "destination": "alias"})
    for name in ("tiny", "alias", "tiny"):
        r = await harness.client.post("/api/generate", json={"model": name, "prompt": "x", "stream": False})
        assert r.status == 200
    assert len(harness.factory.started) == 1


async def test_a_num_ctx_too_large_for_memory_is_refused_by_the_estimate_and_nothing_is_disturbed(harness):
    await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False})
    r = await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "x",
                                                         "options": {"num_ctx": 2**24}})  # the largest allowed
    error = (await r.json())["error"]
    assert r.status == 500 and "requires" in error and "GB" in error
    assert len(harness.factory.started) == 1 and not harness.factory.started[0].closed


async def test_full_queue_answers_503_at_once(harness):
    import asyncio

    harness.factory.load_delay = 0.3  # parallel 4 (the default) + queue 4 are admitted while it loads
    requests = [asyncio.create_task(harness.client.post("/api/generate", json={"model": "tiny", "prompt": "x"}))
                for _ in range(10)]
    statuses = sorted(r.status for r in await asyncio.gather(*requests))
    assert statuses == [200] * 8 + [503] * 2


async def test_options_that_only_change_sampling_do_not_reload(harness):
    for options in ({"temperature": 0}, {"top_k": 5, "seed": 3}, {"num_ctx": 1024}):
        await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "x", "options": options})
    assert len(harness.factory.started) == 1, "num_ctx 1024 fits in the default 4096"
    await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "x", "options": {"num_ctx": 8192}})
    assert len(harness.factory.started) == 2


@pytest.mark.parametrize("content, message", [
    (b"GGUF\x03\x00", "gguf"),            # truncated: a header and nothing else
    (b"just some text, not a model", "gguf"),
])
async def test_create_from_a_blob_that_is_not_a_usable_gguf(harness, content, message):
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    assert (await harness.client.post(f"/api/blobs/{digest}", data=content)).status == 201
    before = harness.files()
    r = await harness.client.post("/api/create", json={"model": "broken", "files": {"m.gguf": digest},
                                                       "stream": False})
    assert r.status == 400 and message in (await r.json())["error"].lower()
    assert harness.files() == before, "no manifest or layer written"
    names = [m["name"] for m in (await (await harness.client.get("/api/tags")).json())["models"]]
    assert "broken:latest" not in names


async def test_delete_stops_the_runner_only_when_no_copy_uses_it(harness):
    await harness.client.post("/api/copy", json={"source": "tiny", "destination": "alias"})
    await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False})
    await harness.client.delete("/api/delete", json={"model": "tiny"})
    ps = (await (await harness.client.get("/api/ps")).json())["models"]
    assert len(ps) == 1, "the copy still uses the runner"
    await harness.client.post("/api/generate", json={"model": "alias", "prompt": "x", "stream": False})
    ps = (await (await harness.client.get("/api/ps")).json())["models"]
    assert [m["name"] for m in ps] == ["alias:latest"], "ps names the model as it was last used"
    await harness.client.delete("/api/delete", json={"model": "alias"})
    assert (await (await harness.client.get("/api/ps")).json())["models"] == []
    assert harness.factory.started[0].closed


async def test_a_model_whose_blob_is_gone_can_still_be_deleted(harness):
    record = harness.store.load("tiny")
    record.model_path.unlink()
    r = await harness.client.delete("/api/delete", json={"model": "tiny"})
    assert r.status == 200
    assert (await (await harness.client.get("/api/tags")).json())["models"] == []


# --- /api/show capabilities -----------------------------------------------------------------------

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SHOW_TOOLS = (
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>\n"
    "Call one as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SHOW_THINKING = SHOW_TOOLS.replace(
    "<|im_start|>assistant\n{% endif %}",
    "<|im_start|>assistant\n{% if enable_thinking is false %}<think>\n\n</think>\n{% endif %}{% endif %}")
SHOW_CASES = {
    "the-ggufs-chatml-template": ({}, None, ["completion"]),
    "tools-template-layer": ({}, SHOW_TOOLS, ["completion", "tools"]),
    "thinking-template-layer": ({}, SHOW_THINKING, ["completion", "tools", "thinking"]),
    "fim-vocabulary": ({"extra_tokens": ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")}, None,
                       ["completion", "insert"]),
    "embedding-model": ({"metadata": {"llama.pooling_type": 1}}, None, ["embedding"]),
}


@pytest.mark.parametrize("gguf, template, expected", SHOW_CASES.values(), ids=SHOW_CASES.keys())
async def test_show_lists_the_capabilities_of_a_created_model(harness, tmp_path, gguf, template, expected):
    from tests.support.tiny_gguf import small_tokenizer, tokenizer_with, write_tiny_llama

    fields = tokenizer_with(small_tokenizer(), **gguf)
    data = write_tiny_llama(tmp_path / "m.gguf", tokenizer=fields, chat_template=CHATML_TEMPLATE).read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert (await harness.client.post(f"/api/blobs/{digest}", data=data)).status == 201
    body = {"model": "made", "files": {"m.gguf": digest}, "stream": False}
    r = await harness.client.post("/api/create", json=body | ({"template": template} if template else {}))
    assert r.status == 200, await r.text()
    show = await (await harness.client.post("/api/show", json={"model": "made"})).json()
    assert show["capabilities"] == expected


async def test_show_of_the_smollm2_based_tiny_model_is_completion_only(harness):
    show = await (await harness.client.post("/api/show", json={"model": "tiny"})).json()
    assert show["capabilities"] == ["completion"]
