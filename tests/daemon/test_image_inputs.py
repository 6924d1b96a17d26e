"""Images as OpenAI, Anthropic and Responses clients send them reach the runner in the native form
(base64 on a message); URLs the daemon would have to fetch, and malformed ones, are refused with
Ollama's texts before anything loads."""

from __future__ import annotations

import pytest

from tests.daemon.test_images import NOT_VISION, PNG

DATA_URL = f"data:image/png;base64,{PNG}"


async def post(harness, path: str, body: dict):
    r = await harness.client.post(path, json=body)
    return r.status, await r.json()


def last_body(harness) -> dict:
    return harness.factory.started[0].bodies[-1]


async def test_an_openai_image_part_is_a_message_of_its_own_as_in_ollama(harness, seer):
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": DATA_URL}}]
    status, answer = await post(harness, "/v1/chat/completions",
                                {"model": "seer", "messages": [{"role": "user", "content": content}]})
    assert status == 200, answer
    assert last_body(harness)["messages"][-2:] == [{"role": "user", "content": "what is this?"},
                                                   {"role": "user", "content": "", "images": [PNG]}]


async def test_the_official_openai_client_sends_an_image_we_take(harness, seer, openai_client):
    await openai_client.chat.completions.create(model="seer", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:;base64,{PNG}"}}]}])
    assert last_body(harness)["messages"][-1]["images"] == [PNG]


async def test_an_anthropic_image_block_rides_on_its_turn(harness, seer):
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    status, answer = await post(harness, "/v1/messages", {"model": "seer", "max_tokens": 8, "messages": [
        {"role": "user", "content": [block, {"type": "text", "text": "what is this?"}]}]})
    assert status == 200, answer
    assert last_body(harness)["messages"][-1] == {"role": "user", "content": "what is this?", "images": [PNG]}


async def test_a_responses_input_image_rides_on_its_message(harness, seer):
    status, answer = await post(harness, "/v1/responses", {"model": "seer", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "what is this?"}, {"type": "input_image", "image_url": DATA_URL}]}]})
    assert status == 200, answer
    assert last_body(harness)["messages"][-1] == {"role": "user", "content": "what is this?", "images": [PNG]}


def openai_image(url: str) -> dict:
    return {"model": "seer", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": url}]}]}


def anthropic_image(source: dict, model: str = "seer") -> dict:
    return {"model": model, "max_tokens": 8,
            "messages": [{"role": "user", "content": [{"type": "image", "source": source}]}]}


@pytest.mark.parametrize("path, body, message", [
    pytest.param("/v1/chat/completions", openai_image("https://example.com/cat.png"),
                 "image URLs are not currently supported, please use base64 encoded data instead", id="openai-url"),
    pytest.param("/v1/chat/completions", openai_image("data:image/gif;base64," + PNG), "invalid image input",
                 id="openai-unlisted-type"),
    pytest.param("/v1/chat/completions", openai_image("data:image/png;base64,%%%"), "invalid image input",
                 id="openai-not-base64"),
    pytest.param("/v1/chat/completions", {**openai_image(DATA_URL), "model": "tiny"}, NOT_VISION,
                 id="openai-no-vision"),
    pytest.param("/v1/messages", anthropic_image({"type": "url", "url": "https://example.com/cat.png"}),
                 "invalid image source type: url. Only base64 images are supported.", id="anthropic-url"),
    pytest.param("/v1/messages", anthropic_image({"type": "base64", "data": "%%%"}), "invalid base64 image data",
                 id="anthropic-not-base64"),
    pytest.param("/v1/messages", anthropic_image({"type": "base64", "data": PNG}, model="tiny"), NOT_VISION,
                 id="anthropic-no-vision"),
    pytest.param("/v1/responses", {"model": "seer", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "http://example.com/cat.png"}]}]},
        "image URLs are not currently supported", id="responses-url"),
])
async def test_images_that_cannot_be_served_are_refused_before_anything_loads(harness, seer, path, body,
                                                                               message):
    status, answer = await post(harness, path, body)
    error = answer["error"]
    assert status == 400 and message in (error if isinstance(error, str) else error["message"])
    assert harness.factory.started == []


async def test_the_official_anthropic_client_sends_an_image_we_take(harness, seer, anthropic_client):
    await anthropic_client.messages.create(model="seer", max_tokens=8, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "text", "text": "what is this?"}]}])
    assert last_body(harness)["messages"][-1] == {"role": "user", "content": "what is this?", "images": [PNG]}


async def test_the_official_openai_client_gets_ollamas_refusal_of_an_image_url(harness, seer, openai_client):
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client.chat.completions.create(model="seer", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])
    assert refused.value.status_code == 400
    assert "image URLs are not currently supported" in refused.value.message
    assert harness.factory.started == []
