"""The official ``ollama`` and ``openai`` Python clients against the daemon (fake runners behind it)."""

from __future__ import annotations

import pytest


@pytest.fixture
def base_url(harness) -> str:
    return str(harness.client.make_url("")).rstrip("/")


async def test_ollama_client_chat_generate_list_show(harness, base_url):
    import ollama

    client = ollama.AsyncClient(host=base_url)
    listed = await client.list()
    assert [m.model for m in listed.models] == ["tiny:latest"]
    shown = await client.show("tiny")
    assert shown.details.family == "llama"
    reply = await client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content == "Hello, world" and reply.done_reason == "stop"
    parts = [part.response async for part in await client.generate(model="tiny", prompt="hi", stream=True)]
    assert "".join(parts) == "Hello, world"
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model="missing", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404


async def test_openai_client_chat_completion_and_stream(harness, base_url):
    import openai

    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused")
    reply = await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                 temperature=0, max_tokens=16)
    assert reply.choices[0].message.content == "Hello, world"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 3
    assert harness.factory.started[0].bodies[0]["options"]["num_predict"] == 16

    stream = await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                  stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello, world"
    assert chunks[-1].usage.total_tokens > 0


async def test_openai_client_completions_models_embeddings_and_errors(harness, base_url):
    import openai

    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused")
    completion = await client.completions.create(model="tiny", prompt="Once upon")
    assert completion.choices[0].text == "Hello, world"
    sent = harness.factory.started[0].bodies[0]
    assert sent["messages"][-1] == {"role": "user", "content": "Once upon"}, "templated, as Ollama's /v1/completions"
    models = await client.models.list()
    assert [m.id for m in models.data] == ["tiny:latest"]
    vectors = await client.embeddings.create(model="tiny", input=["a", "b"])
    assert len(vectors.data) == 2 and vectors.data[1].index == 1
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                             response_format={"type": "yaml"})
    assert "response_format" in str(caught.value)
