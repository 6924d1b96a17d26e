"""The native answers carry exactly the fields their types in ``llmhost.api.responses`` declare, and the
runner is sent only what ``llmhost.api.runner_protocol`` declares, so the typed contract and the wire
cannot drift apart."""

from __future__ import annotations

from typing import Any

from llmhost.api.responses import ChatMessage, GenerateFields, Metrics, ProcessModel
from llmhost.api.runner_protocol import CompletionBody

ENVELOPE = {"model", "created_at", "done", "done_reason"}  # every generate/chat chunk's own fields


def keys_of(typed: Any) -> tuple[frozenset[str], frozenset[str]]:
    return typed.__required_keys__, typed.__required_keys__ | typed.__optional_keys__


async def test_a_final_chat_chunk_is_the_message_plus_ollamas_metrics(harness):
    r = await harness.client.post("/api/chat", json={"model": "tiny", "stream": False,
                                                    "messages": [{"role": "user", "content": "hi"}]})
    body = await r.json()
    required, allowed = keys_of(ChatMessage)
    assert required <= set(body["message"]) <= allowed
    assert set(body) == ENVELOPE | {"message"} | set(Metrics.__annotations__)


async def test_a_generate_answer_is_its_response_plus_ollamas_metrics(harness):
    r = await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "hi", "stream": False})
    body = await r.json()
    required, allowed = keys_of(GenerateFields)
    fields = set(body) - ENVELOPE - set(Metrics.__annotations__) - {"context"}
    assert required <= fields <= allowed


async def test_a_ps_entry_has_the_fields_its_type_declares(harness):
    await harness.client.post("/api/generate", json={"model": "tiny"})  # load it
    [entry] = (await (await harness.client.get("/api/ps")).json())["models"]
    required, allowed = keys_of(ProcessModel)
    assert required <= set(entry) <= allowed
    assert entry["size_vram"] <= entry["size"]


async def test_the_runner_is_sent_only_what_its_protocol_declares(harness):
    for path, body in [
        ("/api/chat", {"messages": [{"role": "user", "content": "hi"}], "format": "json", "think": False}),
        ("/api/generate", {"prompt": "hi", "context": [1, 2], "system": "be brief"}),
        ("/api/generate", {"prompt": "hi", "raw": True, "options": {"num_predict": 3}}),
    ]:
        r = await harness.client.post(path, json={"model": "tiny", "stream": False, **body})
        assert r.status == 200, await r.text()
    required, allowed = keys_of(CompletionBody)
    bodies = harness.factory.started[0].bodies
    assert len(bodies) == 3
    for body in bodies:
        assert required <= set(body) <= allowed, set(body) - allowed
