"""Anthropic's Messages API on the native path, with fake runners behind the seam.

What reaches the runner for each Anthropic field, how the runner's lines come back as a message or as
Anthropic's SSE events (in the exact order the official client accumulates), errors in Anthropic's
shape, and the official ``anthropic`` client against the daemon.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from llmhost.daemon.dialects import Dialect, render_error
from llmhost.errors import ClientClosed, RunnerError, ServerBusy

# The agents tests' store: "tiny" (plain), "tools" (a tools template) and "thinker" (a thinking one).
from tests.daemon.test_agent_routes import template_store  # noqa: F401
from tests.support.waiting import eventually

WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
NATIVE_WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"],
                                                   "description": "Weather in a city"}}
CALL_LINE = {"tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
HI = [{"role": "user", "content": "hi"}]


async def post(harness, body: dict, path: str = "/v1/messages"):
    response = await harness.client.post(path, json=body)
    return response.status, await response.json()


async def events(harness, body: dict) -> list[tuple[str, dict]]:
    """The SSE stream as (event, data) pairs; each data's ``type`` must repeat its event name."""
    response = await harness.client.post("/v1/messages", json={**body, "stream": True})
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    pairs = []
    for chunk in (await response.text()).split("\n\n"):
        if chunk.strip():
            event, data = chunk.split("\n")
            assert event.startswith("event: ") and data.startswith("data: ")
            pairs.append((event[7:], json.loads(data[6:])))
            assert pairs[-1][1]["type"] == pairs[-1][0]
    return pairs


def say(harness, words: list) -> None:
    """What every runner, started or not, answers from now on."""
    harness.factory.words = words
    for runner in harness.factory.started:
        runner.words = words


def last_body(harness) -> dict:
    return harness.factory.started[-1].bodies[-1]


def request(**extra) -> dict:
    return {"model": "tools", "max_tokens": 64, "messages": HI, **extra}


# --- request → runner -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, expected",
    [
        pytest.param({"system": "Be brief."}, {"messages": [{"role": "system", "content": "Be brief."},
                                                            {"role": "user", "content": "hi"}]}, id="system-string"),
        pytest.param({"system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
                                 {"type": "text", "text": "Be kind."}]},
                     {"messages": [{"role": "system", "content": "Be brief.\n\nBe kind."},
                                   {"role": "user", "content": "hi"}]}, id="system-blocks"),
        pytest.param({"max_tokens": 7, "stop_sequences": ["END"], "temperature": 0.2, "top_p": 0.5, "top_k": 3,
                      "metadata": {"user_id": "u"}},
                     {"options": {"num_predict": 7, "stop": ["END"], "temperature": 0.2, "top_p": 0.5, "top_k": 3}},
                     id="sampling"),
        pytest.param({"tools": [WEATHER]}, {"tools": [NATIVE_WEATHER]}, id="tools"),
        pytest.param({"tools": [WEATHER], "tool_choice": {"type": "any"}},
                     {"tool_choice": "required", "parallel_tool_calls": True}, id="tool-choice-any"),
        pytest.param({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather",
                                                          "disable_parallel_tool_use": True}},
                     {"tool_choice": {"name": "get_weather"}, "parallel_tool_calls": False}, id="tool-choice-tool"),
    ],
)
async def test_request_fields_reach_the_runner_in_native_form(harness, extra, expected):
    status, answer = await post(harness, request(**extra))
    assert status == 200, answer
    body = last_body(harness)
    assert {key: body.get(key) for key in expected} == expected


@pytest.mark.parametrize("choice, offered", [({"type": "none"}, False), ({"type": "auto"}, True)])
async def test_tool_choice_none_offers_no_tools_and_auto_forces_nothing(harness, choice, offered):
    await post(harness, request(tools=[WEATHER], tool_choice=choice))
    body = last_body(harness)
    assert ("tools" in body) is offered and "tool_choice" not in body


@pytest.mark.parametrize(
    "model, extra, sent",
    [
        pytest.param("thinker", {"thinking": {"type": "enabled", "budget_tokens": 2048}}, True, id="enabled"),
        pytest.param("thinker", {"thinking": {"type": "disabled"}}, False, id="disabled"),
        pytest.param("thinker", {}, True, id="absent-model-default"),
        pytest.param("thinker", {"thinking": {"type": "adaptive"}}, True, id="adaptive-model-default"),
        pytest.param("tools", {"thinking": {"type": "enabled", "budget_tokens": 2048}}, None,
                     id="relaxed-for-a-model-without"),
        pytest.param("thinker", {"output_config": {"effort": "xhigh"}}, "high", id="effort-as-ollama-reads-it"),
    ],
)
async def test_thinking_maps_to_think(harness, model, extra, sent):
    status, _ = await post(harness, request(model=model, **extra))
    assert status == 200 and last_body(harness).get("think") == sent


async def test_history_with_thinking_tool_use_and_tool_results_maps_to_native_messages(harness):
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris"},
                                     {"type": "text", "text": "and Oslo?"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Two lookups.", "signature": "sig"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 degrees"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "station offline"}]},
            {"type": "text", "text": "Summarise."}]},
    ]
    status, answer = await post(harness, request(messages=history, tools=[WEATHER]))
    assert status == 200, answer
    sent = last_body(harness)["messages"]
    assert sent[0] == {"role": "user", "content": "Weather in Paris\n\nand Oslo?"}
    assert sent[1]["content"] == "Checking." and sent[1]["thinking"] == "Two lookups."
    assert [c["function"] for c in sent[1]["tool_calls"]] == [
        {"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["toolu_1", "toolu_2"]
    assert sent[2] == {"role": "tool", "content": "18 degrees", "tool_call_id": "toolu_1",
                       "tool_name": "get_weather", "name": "get_weather"}
    assert sent[3]["content"] == "Error: station offline" and sent[3]["tool_call_id"] == "toolu_2"
    assert sent[4] == {"role": "user", "content": "Summarise."}


# --- runner → response ----------------------------------------------------------------------------


async def test_text_answer_with_anthropic_usage_counting_cache_reads_apart(harness):
    await post(harness, request(model="tiny"))
    harness.factory.started[0].cached = 40
    status, answer = await post(harness, request(model="tiny"))
    assert status == 200
    assert answer["id"].startswith("msg_") and answer["type"] == "message" and answer["role"] == "assistant"
    assert answer["model"] == "tiny:latest"
    assert answer["content"] == [{"type": "text", "text": "Hello, world"}]
    assert answer["stop_reason"] == "end_turn" and answer["stop_sequence"] is None
    # the runner evaluated 5 tokens and reused 40: Anthropic's input_tokens is the uncached part
    assert answer["usage"] == {"input_tokens": 5, "output_tokens": 3, "cache_read_input_tokens": 40,
                               "cache_creation_input_tokens": 0}


async def test_thinking_text_and_tool_use_blocks_in_order(harness):
    harness.factory.words = [{"thinking": "Look it up."}, "Let me check.", CALL_LINE]
    status, answer = await post(harness, request(tools=[WEATHER]))
    assert status == 200, answer
    thinking, text, call = answer["content"]
    assert thinking == {"type": "thinking", "thinking": "Look it up.", "signature": ""}
    assert text == {"type": "text", "text": "Let me check."}
    assert call["type"] == "tool_use" and call["id"].startswith("call_")
    assert (call["name"], call["input"]) == ("get_weather", {"city": "Paris"})
    assert answer["stop_reason"] == "tool_use"


async def test_num_predict_reached_is_max_tokens(harness):
    harness.factory.words = ["Hel", {"done": True, "done_reason": "length", "prompt_eval_count": 4, "eval_count": 1}]
    _, answer = await post(harness, request(max_tokens=1))
    assert answer["stop_reason"] == "max_tokens" and answer["usage"]["output_tokens"] == 1


async def test_stream_events_follow_anthropics_order(harness):
    harness.factory.words = [{"thinking": "Hmm"}, {"thinking": "."}, "Let me", " check.", CALL_LINE]
    pairs = await events(harness, request(tools=[WEATHER]))
    names = [event for event, _ in pairs]
    assert names == ["message_start", "ping",
                     "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    start = pairs[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    blocks = [data for event, data in pairs if event == "content_block_start"]
    assert [b["index"] for b in blocks] == [0, 1, 2]
    assert blocks[0]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert blocks[1]["content_block"] == {"type": "text", "text": ""}
    assert blocks[2]["content_block"]["type"] == "tool_use" and blocks[2]["content_block"]["input"] == {}
    deltas = [data["delta"] for event, data in pairs if event == "content_block_delta"]
    assert deltas[:2] == [{"type": "thinking_delta", "thinking": "Hmm"}, {"type": "thinking_delta", "thinking": "."}]
    assert deltas[2:4] == [{"type": "text_delta", "text": "Let me"}, {"type": "text_delta", "text": " check."}]
    assert deltas[4] == {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'}
    final = pairs[-2][1]
    assert final["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert final["usage"] == {"input_tokens": 5, "output_tokens": 5, "cache_read_input_tokens": 0,
                              "cache_creation_input_tokens": 0}


async def test_an_error_mid_stream_is_an_error_event(harness):
    harness.factory.words = ["Hello", {"error": "model runner crashed (signal 9)"}]
    pairs = await events(harness, request(model="tiny"))
    assert [event for event, _ in pairs][-1] == "error"
    assert pairs[-1][1] == {"type": "error", "error": {"type": "api_error",
                                                       "message": "model runner crashed (signal 9)"}}


async def test_a_client_leaving_mid_stream_frees_the_model(harness):
    harness.factory.gate = asyncio.Event()  # the runner holds its second line until the gate opens
    response = await harness.client.post("/v1/messages", json=request(model="tiny", stream=True))
    assert (await response.content.readuntil(b"\n\n")).startswith(b"event: message_start")
    (resident,) = harness.residency.residents()
    assert resident.refcount == 1
    response.close()
    harness.factory.gate.set()
    await eventually(lambda: resident.refcount == 0, what="the model released")


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, status, kind, message",
    [
        pytest.param({"model": "tiny", "messages": HI}, 400, "invalid_request_error", '"max_tokens" is required',
                     id="max-tokens-missing"),
        pytest.param(request(max_tokens=0), 400, "invalid_request_error", "positive integer", id="max-tokens-zero"),
        pytest.param(request(messages=[]), 400, "invalid_request_error", '"messages" is required', id="no-messages"),
        pytest.param(request(messages=[{"role": "system", "content": "x"}]), 400, "invalid_request_error",
                     "messages[0]", id="system-role-in-messages"),
        pytest.param(request(messages=[{"role": "user", "content": [{"type": "video"}]}]), 400,
                     "invalid_request_error", 'messages[0].content[0]: unsupported type "video"', id="unknown-block"),
        pytest.param(request(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), 400,
                     "invalid_request_error", 'invalid text block at messages[0].content[0]', id="text-not-a-string"),
        pytest.param(request(messages=[{"role": "user", "content": [{"type": "tool_use", "name": "f"}]}]), 400,
                     "invalid_request_error", '"id" and "name"', id="tool-use-without-id"),
        pytest.param(request(messages=[{"role": "assistant", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]), 400, "invalid_request_error",
            "belong in a user message", id="tool-result-from-assistant"),
        pytest.param(request(messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]),
            400, "invalid_request_error", "does not support vision", id="image-without-vision"),
        pytest.param(request(tools=[{"type": "web_search_20250305", "name": "web_search"}]), 400,
                     "invalid_request_error", "not supported", id="server-tool"),
        pytest.param(request(tools=[{"name": "f"}]), 400, "invalid_request_error", "input_schema",
                     id="tool-without-schema"),
        pytest.param(request(tool_choice={"type": "any"}), 400, "invalid_request_error", "offers no tools",
                     id="tool-choice-without-tools"),
        pytest.param(request(tools=[WEATHER], tool_choice={"type": "tool", "name": "nope"}), 400,
                     "invalid_request_error", "not among the tools", id="tool-choice-unknown"),
        pytest.param(request(thinking={"type": "sometimes"}), 400, "invalid_request_error", '"thinking"',
                     id="thinking-unknown"),
        pytest.param(request(model="missing"), 404, "not_found_error", "'missing", id="unknown-model"),
    ],
)
async def test_errors_come_in_anthropics_shape_before_anything_starts(harness, body, status, kind, message):
    got, answer = await post(harness, body)
    assert got == status and answer["type"] == "error" and answer["error"]["type"] == kind
    assert message in answer["error"]["message"]
    assert harness.factory.started == []


@pytest.mark.parametrize(
    "error, kind",
    [
        pytest.param(ServerBusy(), "overloaded_error", id="queue-full-503"),
        pytest.param(RunnerError("model runner crashed"), "api_error", id="runner-500"),
        pytest.param(ClientClosed("gone"), "api_error", id="client-closed-499"),
    ],
)
def test_error_types_follow_the_status(error, kind):
    assert render_error(error, Dialect.ANTHROPIC) == (error.status, {"type": "error",
                                                                     "error": {"type": kind, "message": error.message}})


async def test_each_protocol_keeps_its_own_error_shape(harness):
    response = await harness.client.post("/v1/messages", data=b"{oops")
    assert response.status == 400 and (await response.json())["error"]["type"] == "invalid_request_error"
    _, openai = await post(harness, {"model": "missing", "messages": HI}, "/v1/chat/completions")
    assert openai["error"]["type"] == "not_found_error" and "type" not in openai
    _, counted = await post(harness, {"model": "missing", "messages": HI}, "/v1/messages/count_tokens")
    assert counted["type"] == "error" and counted["error"]["type"] == "not_found_error"


# --- count_tokens ---------------------------------------------------------------------------------


async def test_count_tokens_renders_the_prompt_and_generates_nothing(harness):
    status, answer = await post(harness, {"model": "tools", "messages": HI, "system": "Be brief.",
                                          "tools": [WEATHER]}, "/v1/messages/count_tokens")
    assert status == 200 and answer == {"input_tokens": 5}
    body = last_body(harness)
    assert body["options"]["num_predict"] == 0 and body["truncate"] is False
    assert body["tools"] == [NATIVE_WEATHER] and body["messages"][0]["content"] == "Be brief."
    harness.factory.started[0].cached = 30
    _, answer = await post(harness, {"model": "tools", "messages": HI}, "/v1/messages/count_tokens")
    assert answer == {"input_tokens": 35}, "cached tokens are part of the prompt"


# --- the official client --------------------------------------------------------------------------


async def test_anthropic_client_create_stream_and_tools(harness, anthropic_client):

    reply = await anthropic_client.messages.create(model="tiny", max_tokens=16, messages=HI)
    assert reply.content[0].text == "Hello, world" and reply.stop_reason == "end_turn"
    assert reply.usage.input_tokens == 5 and reply.usage.cache_read_input_tokens == 0

    async with anthropic_client.messages.stream(model="tiny", max_tokens=16, messages=HI) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello, world" and final.content[0].text == "Hello, world"
    assert final.usage.input_tokens == 5 and final.usage.output_tokens == 3 and final.stop_reason == "end_turn"

    say(harness, [{"thinking": "Need data."}, CALL_LINE])
    async with anthropic_client.messages.stream(model="tools", max_tokens=64, messages=HI, tools=[WEATHER],
                                                tool_choice={"type": "any"}) as stream:
        final = await stream.get_final_message()
    thinking, call = final.content
    assert thinking.type == "thinking" and thinking.thinking == "Need data."
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"

    second = await anthropic_client.messages.create(model="tools", max_tokens=64, tools=[WEATHER], messages=[
        *HI, final.to_param(), {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees"}]}])
    assert second.stop_reason == "tool_use"
    assert last_body(harness)["messages"][-1]["tool_call_id"] == call.id

    counted = await anthropic_client.messages.count_tokens(model="tools", messages=HI, tools=[WEATHER])
    assert counted.input_tokens == 5


async def test_anthropic_client_raises_typed_errors(harness, anthropic_client):
    import anthropic

    with pytest.raises(anthropic.NotFoundError) as caught:
        await anthropic_client.messages.create(model="missing", max_tokens=8, messages=HI)
    assert "not found" in caught.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        await anthropic_client.messages.create(model="tiny", max_tokens=8, messages=[{"role": "user", "content": []}])
    say(harness, ["Hello", {"error": "model runner crashed (signal 9)"}])
    with pytest.raises(anthropic.APIStatusError, match="crashed"):
        async with anthropic_client.messages.stream(model="tiny", max_tokens=8, messages=HI) as stream:
            await stream.get_final_message()
