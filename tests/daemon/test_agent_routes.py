"""Tools, thinking, logprobs, context and token accounting on the native and /v1 routes.

The daemon's half of the contract, with fake runners behind the seam: capability checks (nothing is
started for a request the model cannot serve), what reaches the runner (tools, history with tool calls,
the resolved ``think``), and how the runner's lines come back in each protocol's shape. The templates
are written here, in each family's format, so the capabilities come from the model as stored.
"""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest

from llmhost.registry.store import Store
from tests.daemon.conftest import add_model

# Hermes-style: tools listed in the system turn, calls answered inside <tool_call> tags.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nFunctions you may call:\n"
    "{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    "Answer a call as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
    "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A reasoning model's template: thinks in <think> unless enable_thinking is false.
THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CALL_LINE = {"tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def template_store(tmp_path_factory, tiny_gguf) -> Path:
    """The daemon tests' store plus a tools model and a thinking model (overrides conftest's, once per module)."""
    root = tmp_path_factory.mktemp("agents") / "models"
    store = Store(root)
    add_model(store, "tiny", tiny_gguf, system="You are tiny.", parameters={"temperature": 0.5})
    add_model(store, "tools", tiny_gguf, template=TOOLS_TEMPLATE)
    add_model(store, "thinker", tiny_gguf, template=THINK_TEMPLATE)
    return root


@pytest.fixture
def agents(harness):
    return harness


async def post(harness, path: str, body: dict):
    response = await harness.client.post(path, json=body)
    return response.status, await response.json()


async def ndjson(harness, path: str, body: dict) -> list[dict]:
    response = await harness.client.post(path, json=body)
    assert response.status == 200, await response.text()
    return [json.loads(line) for line in (await response.text()).splitlines() if line]


def last_body(harness) -> dict:
    return harness.factory.started[-1].bodies[-1]


# --- capabilities gate ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, error",
    [
        pytest.param("/api/chat", {"model": "tiny", "messages": HI, "tools": [WEATHER]},
                     "registry.ollama.ai/library/tiny:latest does not support tools", id="tools-on-plain-model"),
        pytest.param("/api/chat", {"model": "tiny", "messages": HI, "think": True},
                     '"tiny" does not support thinking', id="think-on-plain-model"),
        pytest.param("/api/generate", {"model": "tiny", "prompt": "def f(", "suffix": "return 1"},
                     "registry.ollama.ai/library/tiny:latest does not support insert", id="suffix-without-fim"),
        pytest.param("/v1/chat/completions", {"model": "tiny", "messages": HI, "tools": [WEATHER]},
                     "registry.ollama.ai/library/tiny:latest does not support tools", id="v1-tools-on-plain-model"),
    ],
)
async def test_a_capability_the_model_lacks_is_a_400_and_nothing_starts(agents, path, body, error):
    status, answer = await post(agents, path, body)
    assert status == 400
    message = answer["error"]["message"] if path.startswith("/v1") else answer["error"]
    assert message == error
    assert agents.factory.started == []


@pytest.mark.parametrize(
    "body, error",
    [
        pytest.param({"tools": {"name": "x"}}, "expected an array of tools", id="tools-not-a-list"),
        pytest.param({"tools": [{"type": "function", "function": {"description": "no name"}}]},
                     '"function.name" must be a non-empty string', id="tool-without-name"),
        pytest.param({"think": "extreme"}, 'invalid think value: "extreme"', id="think-level-unknown"),
        pytest.param({"logprobs": True, "top_logprobs": 21}, "top_logprobs must be between 0 and 20",
                     id="top-logprobs-21"),
        pytest.param({"messages": [{"role": "assistant", "content": "",
                                    "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}]},
                     "not valid JSON", id="history-arguments-not-json"),
        pytest.param({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [WEATHER]},
                     "not among the tools", id="tool-choice-unknown-function"),
    ],
)
async def test_bad_agent_input_is_a_400_before_anything_starts(agents, body, error):
    status, answer = await post(agents, "/api/chat", {"model": "tools", "messages": HI, **body})
    assert status == 400 and error in answer["error"]
    assert agents.factory.started == []


# --- tools ----------------------------------------------------------------------------------------


async def test_native_tool_call_comes_back_whole_with_an_id(agents):
    agents.factory.words = [CALL_LINE]
    status, answer = await post(agents, "/api/chat",
                                {"model": "tools", "messages": HI, "tools": [WEATHER], "stream": False})
    assert status == 200
    (call,) = answer["message"]["tool_calls"]
    assert call["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    assert call["id"].startswith("call_") and len(call["id"]) == 13
    assert answer["message"]["content"] == "" and answer["done_reason"] == "stop"
    assert last_body(agents)["tools"] == [WEATHER]


async def test_history_with_tool_calls_and_results_reaches_the_template_intact(agents):
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "thinking": "I should look it up",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"},
    ]
    await post(agents, "/api/chat", {"model": "tools", "messages": history, "tools": [WEATHER], "stream": False})
    sent = last_body(agents)["messages"]
    assert sent[1]["tool_calls"] == [{"type": "function",
                                      "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert sent[1]["thinking"] == sent[1]["reasoning_content"] == "I should look it up"
    assert sent[2] == {"role": "tool", "content": "18 degrees", "tool_name": "get_weather", "name": "get_weather"}


async def test_tool_choice_none_offers_no_tools_and_required_reaches_the_runner(agents):
    await post(agents, "/api/chat", {"model": "tools", "messages": HI, "tools": [WEATHER], "tool_choice": "none",
                                     "stream": False})
    assert "tools" not in last_body(agents) and "tool_choice" not in last_body(agents)
    await post(agents, "/api/chat", {"model": "tools", "messages": HI, "tools": [WEATHER], "stream": False,
                                     "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    assert last_body(agents)["tool_choice"] == {"name": "get_weather"}


async def test_streamed_chat_keeps_content_then_sends_each_call_in_its_own_chunk(agents):
    agents.factory.words = ["Let me check.", CALL_LINE,
                            {"tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]}]
    chunks = await ndjson(agents, "/api/chat", {"model": "tools", "messages": HI, "tools": [WEATHER]})
    assert chunks[0]["message"]["content"] == "Let me check."
    calls = [c["message"]["tool_calls"] for c in chunks if "tool_calls" in c["message"]]
    assert [c[0]["function"]["index"] for c in calls] == [0, 1]
    assert [c[0]["function"]["arguments"]["city"] for c in calls] == ["Paris", "Oslo"]
    assert chunks[-1]["done"] is True


# --- thinking -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "think, sent",
    [
        pytest.param(None, True, id="default-on-for-a-thinking-model"),
        pytest.param(False, False, id="switched-off"),
        pytest.param("high", "high", id="level"),
    ],
)
async def test_think_is_resolved_against_the_model(agents, think, sent):
    body = {"model": "thinker", "messages": HI, "stream": False}
    if think is not None:
        body["think"] = think
    status, _ = await post(agents, "/api/chat", body)
    assert status == 200 and last_body(agents)["think"] == sent


async def test_a_model_without_thinking_gets_no_think_and_false_is_accepted(agents):
    status, _ = await post(agents, "/api/chat", {"model": "tiny", "messages": HI, "think": False, "stream": False})
    assert status == 200 and "think" not in last_body(agents)


async def test_thinking_streams_separately_and_merges_for_stream_false(agents):
    agents.factory.words = [{"thinking": "Let me think. "}, {"thinking": "Done."}, "Hello", " there"]
    chunks = await ndjson(agents, "/api/chat", {"model": "thinker", "messages": HI})
    assert [c["message"].get("thinking") for c in chunks[:2]] == ["Let me think. ", "Done."]
    assert all("thinking" not in c["message"] for c in chunks[2:])
    _, whole = await post(agents, "/api/chat", {"model": "thinker", "messages": HI, "stream": False})
    assert whole["message"] == {"role": "assistant", "content": "Hello there", "thinking": "Let me think. Done."}
    _, generated = await post(agents, "/api/generate", {"model": "thinker", "prompt": "hi", "stream": False})
    assert generated["thinking"] == "Let me think. Done." and generated["response"] == "Hello there"


# --- accounting, logprobs, context ----------------------------------------------------------------


async def test_prompt_eval_count_counts_cached_tokens_as_ollama_does(agents):
    await post(agents, "/api/chat", {"model": "tiny", "messages": HI, "stream": False})
    agents.factory.started[0].cached = 40
    _, answer = await post(agents, "/api/chat", {"model": "tiny", "messages": HI, "stream": False})
    assert answer["prompt_eval_count"] == 45 and answer["prompt_cached_count"] == 40
    _, v1 = await post(agents, "/v1/chat/completions", {"model": "tiny", "messages": HI})
    assert v1["usage"]["prompt_tokens"] == 45
    assert v1["usage"]["prompt_tokens_details"] == {"cached_tokens": 40}


LOGPROB = {"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": [
    {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]}]}


async def test_logprobs_ride_on_the_chunk_of_their_token(agents):
    agents.factory.words = [{"logprobs": [LOGPROB]}, "Hi"]
    chunks = await ndjson(agents, "/api/chat", {"model": "tiny", "messages": HI, "logprobs": True,
                                                "top_logprobs": 1})
    assert chunks[0]["message"]["content"] == "Hi" and chunks[0]["logprobs"] == [LOGPROB]
    assert last_body(agents)["logprobs"] == 1
    _, v1 = await post(agents, "/v1/chat/completions", {"model": "tiny", "messages": HI, "logprobs": True,
                                                        "top_logprobs": 1})
    assert v1["choices"][0]["logprobs"] == {"content": [LOGPROB]}


async def test_generate_returns_context_and_takes_it_back(agents):
    _, first = await post(agents, "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False})
    assert first["context"] == [1, 2, 3] and last_body(agents)["return_context"] is True
    await post(agents, "/api/generate", {"model": "tiny", "prompt": "more", "context": first["context"],
                                         "stream": False})
    assert last_body(agents)["context"] == [1, 2, 3]


# --- /v1 -----------------------------------------------------------------------------------------


async def test_openai_client_gets_tool_calls_streamed_and_not(agents, openai_client):

    agents.factory.words = [CALL_LINE]
    reply = await openai_client.chat.completions.create(model="tools", messages=HI, tools=[WEATHER],
                                                        tool_choice="required")
    (call,) = reply.choices[0].message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"} and call.id.startswith("call_")
    assert reply.choices[0].finish_reason == "tool_calls"
    assert last_body(agents)["tool_choice"] == "required"

    stream = await openai_client.chat.completions.create(model="tools", messages=HI, tools=[WEATHER], stream=True)
    pieces, finish = {}, None
    async for chunk in stream:
        for piece in chunk.choices[0].delta.tool_calls or []:
            entry = pieces.setdefault(piece.index, {"name": "", "arguments": ""})
            entry["name"] += piece.function.name or ""
            entry["arguments"] += piece.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert pieces == {0: {"name": "get_weather", "arguments": '{"city": "Paris"}'}} and finish == "tool_calls"


async def test_openai_history_with_tool_results_maps_to_native_messages(agents):
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "20 degrees"},
    ]
    status, _ = await post(agents, "/v1/chat/completions", {"model": "tools", "messages": messages,
                                                            "tools": [WEATHER]})
    assert status == 200
    sent = last_body(agents)["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Rome"}}
    assert sent[2]["tool_name"] == "get_weather" and sent[2]["tool_call_id"] == "call_1"


async def test_openai_reasoning_comes_back_in_both_fields(agents):
    agents.factory.words = [{"thinking": "Hmm."}, "Yes"]
    status, answer = await post(agents, "/v1/chat/completions", {"model": "thinker", "messages": HI,
                                                                 "reasoning_effort": "low"})
    assert status == 200 and last_body(agents)["think"] == "low"
    message = answer["choices"][0]["message"]
    assert message["content"] == "Yes" and message["reasoning"] == message["reasoning_content"] == "Hmm."
    response = await agents.client.post("/v1/chat/completions",
                                        json={"model": "thinker", "messages": HI, "stream": True})
    events = [json.loads(line[6:]) for line in (await response.text()).splitlines()
              if line.startswith("data: {")]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert deltas[0]["reasoning_content"] == "Hmm." and deltas[0]["role"] == "assistant"
    assert "".join(d.get("content") or "" for d in deltas) == "Yes"


@pytest.mark.parametrize(
    "body, error",
    [
        pytest.param({"stream": True, "stream_options": "yes"}, "stream_options", id="stream-options-not-object"),
        pytest.param({"reasoning_effort": "huge"}, "invalid reasoning value", id="unknown-effort"),
        pytest.param({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}]}]},
            "invalid tool call arguments", id="arguments-not-json"),
        pytest.param({"logit_bias": {"abc": 5}}, "logit_bias", id="logit-bias-not-a-token"),
    ],
)
async def test_openai_bad_input_is_a_400_before_anything_starts(agents, body, error):
    status, answer = await post(agents, "/v1/chat/completions", {"model": "tiny", "messages": HI, **body})
    assert status == 400 and error in answer["error"]["message"]
    assert agents.factory.started == []


async def test_openai_defaults_and_logit_bias_reach_the_runner(agents):
    await post(agents, "/v1/chat/completions", {"model": "tiny", "messages": HI, "logit_bias": {"42": -100}})
    body = last_body(agents)
    assert body["options"]["temperature"] == 1.0 and body["options"]["top_p"] == 1.0
    assert body["logit_bias"] == {"42": -100.0}


async def test_v1_completions_applies_the_template_like_ollama(agents):
    await post(agents, "/v1/completions", {"model": "tiny", "prompt": "Once upon"})
    body = last_body(agents)
    assert "prompt" not in body and body["messages"][-1] == {"role": "user", "content": "Once upon"}


async def test_v1_embeddings_in_base64(agents):
    status, answer = await post(agents, "/v1/embeddings", {"model": "tiny", "input": ["a"],
                                                           "encoding_format": "base64"})
    assert status == 200
    raw = base64.b64decode(answer["data"][0]["embedding"])
    assert list(struct.unpack("<3f", raw)) == pytest.approx([0.6, 0.8, 0.0])
