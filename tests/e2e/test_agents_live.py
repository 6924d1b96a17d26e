"""Agents and reasoning on the real SmolLM2 with the official clients: a daemon, real runners.

SmolLM2 has no tool or thinking training, so the model is given templates of our own through a
Modelfile (as a user would). A forced ``tool_choice`` makes even this small model return a call whose
arguments follow the schema; the thinking template opens a ``<think>`` block that the parser must keep
out of the answer.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

pytestmark = pytest.mark.model

# Hermes-style tools template in SmolLM2's ChatML tokens, written for these tests.
TOOLS_TEMPLATE = """{% if tools %}<|im_start|>system
You can call functions. Their signatures:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}To call one, answer <tool_call>{"name": NAME, "arguments": ARGS}</tool_call><|im_end|>
{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}
{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

THINK_TEMPLATE = """{% for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and not enable_thinking %}<think>

</think>

{% else %}<think>
{% endif %}{% endif %}"""

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"]}}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def create(daemon, tmp_path, name: str, template: str) -> None:
    modelfile = tmp_path / f"{name}.Modelfile"
    modelfile.write_text(f'FROM {daemon.smollm2}\nPARAMETER temperature 0\nTEMPLATE """{template}"""\n')
    result = daemon.llm("create", name, "-f", str(modelfile))
    assert result.returncode == 0, result.stderr


@pytest.fixture
def agent_daemon(live_daemon, smollm2_path, tmp_path):
    live_daemon.smollm2 = smollm2_path
    create(live_daemon, tmp_path, "smol-tools", TOOLS_TEMPLATE)
    create(live_daemon, tmp_path, "smol-think", THINK_TEMPLATE)
    return live_daemon


def post(daemon, path: str, body: dict) -> dict:
    request = urllib.request.Request(daemon.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=240) as response:
        return json.loads(response.read())


def test_capabilities_follow_the_template(agent_daemon):
    assert "tools" in post(agent_daemon, "/api/show", {"model": "smol-tools"})["capabilities"]
    assert "thinking" in post(agent_daemon, "/api/show", {"model": "smol-think"})["capabilities"]


def test_required_tool_choice_gives_a_schema_valid_call_through_the_openai_client(agent_daemon, closing):
    import openai

    client = closing(openai.OpenAI(base_url=agent_daemon.url + "/v1", api_key="unused"))
    reply = client.chat.completions.create(model="smol-tools", messages=QUESTION, tools=[WEATHER],
                                           tool_choice="required", parallel_tool_calls=False, temperature=0,
                                           max_tokens=80)
    (call,) = reply.choices[0].message.tool_calls
    arguments = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and isinstance(arguments["city"], str)
    assert arguments["unit"] in ("C", "F") and reply.choices[0].finish_reason == "tool_calls"

    stream = client.chat.completions.create(model="smol-tools", messages=QUESTION, tools=[WEATHER],
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                            temperature=0, max_tokens=120, stream=True)
    calls, text = {}, ""
    for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        for piece in (delta.tool_calls or []) if delta else []:
            entry = calls.setdefault(piece.index, {"name": "", "arguments": ""})
            entry["name"] += piece.function.name or ""
            entry["arguments"] += piece.function.arguments or ""
        text += (delta.content or "") if delta else ""
    assert calls and "<tool_call>" not in text
    for entry in calls.values():  # parallel calls are allowed: each one whole and schema-valid
        assert entry["name"] == "get_weather" and set(json.loads(entry["arguments"])) == {"city", "unit"}


def test_ollama_client_agent_loop_reuses_the_previous_turn(agent_daemon, closing):
    import ollama

    client = closing(ollama.Client(host=agent_daemon.url))
    first = client.chat(model="smol-tools", messages=QUESTION, tools=[WEATHER], options={"num_predict": 40})
    assert first.done
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}}
    history = [*QUESTION, {"role": "assistant", "content": "", "tool_calls": [call]},
               {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_weather"}]
    second = client.chat(model="smol-tools", messages=history, tools=[WEATHER], options={"num_predict": 30})
    assert second.done and second.message.role == "assistant"

    # The same loop replayed statelessly: the third turn re-sends everything, and only its new tokens
    # are evaluated (the prefix of the second turn is still in the KV cache).
    body = {"model": "smol-tools", "messages": history, "tools": [WEATHER], "stream": False,
            "options": {"num_predict": 30}}
    turn = post(agent_daemon, "/api/chat", body)
    history = [*history, turn["message"], {"role": "user", "content": "And tomorrow?"}]
    again = post(agent_daemon, "/api/chat", {**body, "messages": history})
    evaluated = again["prompt_eval_count"] - again["prompt_cached_count"]
    assert again["prompt_cached_count"] >= turn["prompt_eval_count"] - 1
    assert 0 < evaluated < 30, again


def test_thinking_is_split_from_the_answer_and_switched_off(agent_daemon):
    thought = post(agent_daemon, "/api/chat", {"model": "smol-think", "messages": QUESTION, "stream": False,
                                               "options": {"num_predict": 24}})
    assert thought["message"]["thinking"].strip(), "the opened <think> block is thinking"
    assert "<think>" not in thought["message"]["content"]
    plain = post(agent_daemon, "/api/chat", {"model": "smol-think", "messages": QUESTION, "think": False,
                                             "stream": False, "options": {"num_predict": 24}})
    assert plain["message"]["content"].strip() and "thinking" not in plain["message"]


def test_think_on_a_model_without_thinking_is_refused(agent_daemon):
    with pytest.raises(urllib.error.HTTPError) as caught:
        post(agent_daemon, "/api/chat", {"model": "smol-tools", "messages": QUESTION, "think": True})
    assert caught.value.code == 400
    assert json.loads(caught.value.read())["error"] == '"smol-tools" does not support thinking'
