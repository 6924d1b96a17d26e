"""The official ``anthropic`` client against a real daemon on SmolLM2 (real runners).

SmolLM2 has no tool training, so it gets the Hermes-style tools template of the agents tests through a
Modelfile, which also sets temperature 0 (the current client no longer sends sampling fields). A
forced ``tool_choice`` makes it answer with a schema-valid call, which then goes back as a
``tool_result`` in a second turn that reuses the first turn's KV prefix.
"""

from __future__ import annotations

import pytest

from tests.e2e.test_agents_live import TOOLS_TEMPLATE, create

pytestmark = pytest.mark.model

WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"},
                                                             "unit": {"enum": ["C", "F"]}},
                            "required": ["city", "unit"]}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def client(live_daemon, smollm2_path, tmp_path):
    import anthropic

    live_daemon.smollm2 = smollm2_path
    create(live_daemon, tmp_path, "smol-tools", TOOLS_TEMPLATE)
    with anthropic.Anthropic(base_url=live_daemon.url, api_key="unused", max_retries=0) as sdk:
        yield sdk


def test_create_and_stream_answer_in_text(client):
    # Claude Code asks for thinking whatever the model: a model without it answers plainly.
    reply = client.messages.create(model="smol-tools", max_tokens=16, messages=QUESTION,
                                   thinking={"type": "enabled", "budget_tokens": 1024})
    (text,) = reply.content
    assert text.type == "text" and text.text.strip()
    assert reply.stop_reason in ("end_turn", "max_tokens") and 0 < reply.usage.output_tokens <= 16
    assert reply.usage.input_tokens + reply.usage.cache_read_input_tokens > 10

    with client.messages.stream(model="smol-tools", max_tokens=16, messages=QUESTION) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == final.content[0].text == text.text, "same prompt at temperature 0 (the Modelfile's)"
    assert final.usage.cache_read_input_tokens > 0, "the repeated prompt came from the KV cache"
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == \
        reply.usage.input_tokens + reply.usage.cache_read_input_tokens


def test_forced_tool_use_then_tool_result_turn(client):
    forced = {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    with client.messages.stream(model="smol-tools", max_tokens=80, messages=QUESTION, tools=[WEATHER],
                                tool_choice=forced) as stream:
        first = stream.get_final_message()
    calls = [block for block in first.content if block.type == "tool_use"]
    assert len(calls) == 1 and first.stop_reason == "tool_use"
    assert calls[0].name == "get_weather" and isinstance(calls[0].input["city"], str)
    assert calls[0].input["unit"] in ("C", "F")

    history = [*QUESTION, first.to_param(), {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": calls[0].id, "content": "18 degrees and sunny"}]}]
    counted = client.messages.count_tokens(model="smol-tools", messages=history, tools=[WEATHER])
    second = client.messages.create(model="smol-tools", max_tokens=30, messages=history, tools=[WEATHER])
    assert second.content and second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    usage = second.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == counted.input_tokens
    assert usage.cache_read_input_tokens > usage.input_tokens, "the earlier turn's prefix came from the KV cache"
