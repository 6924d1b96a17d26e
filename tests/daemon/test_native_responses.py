"""The native answers carry exactly the fields their types in ``llmhost.api.responses`` declare, so the
typed contract and the wire cannot drift apart."""

from __future__ import annotations

from typing import Any

from llmhost.api.responses import ChatMessage, GenerateFields, Metrics, ProcessModel

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
