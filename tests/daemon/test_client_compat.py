"""The official ``ollama`` and ``openai`` Python clients against the daemon (fake runners behind it)."""

from __future__ import annotations

import pytest


async def test_ollama_client_chat_generate_list_show(harness, ollama_client):
    import ollama

    listed = await ollama_client.list()
    assert [m.model for m in listed.models] == ["tiny:latest"]
    shown = await ollama_client.show("tiny")
    assert shown.details.family == "llama"
    reply = await ollama_client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content == "Hello, world" and reply.done_reason == "stop"
    parts = [part.response async for part in await ollama_client.generate(model="tiny", prompt="hi", stream=True)]
    assert "".join(parts) == "Hello, world"
    with pytest.raises(ollama.ResponseError) as caught:
        await ollama_client.chat(model="missing", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404


async def test_openai_client_chat_completion_and_stream(harness, openai_client):

    reply = await openai_client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                        temperature=0, max_tokens=16)
    assert reply.choices[0].message.content == "Hello, world"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 3
    assert harness.factory.started[0].bodies[0]["options"]["num_predict"] == 16

    stream = await openai_client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                         stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world"
    assert chunks[-1].usage.total_tokens > 0


async def test_openai_client_completions_models_embeddings_and_errors(harness, openai_client):
    import openai

    completion = await openai_client.completions.create(model="tiny", prompt="Once upon")
    assert completion.choices[0].text == "Hello, world"
    sent = harness.factory.started[0].bodies[0]
    assert sent["messages"][-1] == {"role": "user", "content": "Once upon"}, "templated, as Ollama's /v1/completions"
    models = await openai_client.models.list()
    assert [m.id for m in models.data] == ["tiny:latest"]
    vectors = await openai_client.embeddings.create(model="tiny", input=["a", "b"])
    assert len(vectors.data) == 2 and vectors.data[1].index == 1
    with pytest.raises(openai.NotFoundError):
        await openai_client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as caught:
        await openai_client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                                    response_format={"type": "yaml"})
    assert "response_format" in str(caught.value)
