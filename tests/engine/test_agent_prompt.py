"""The runner's half of tools and thinking: template variables, FIM prompts, context, forced calls.

Runs on the tiny random-weight model: the text it generates is meaningless, so what is checked is
what the model is given (prompt tokens, template variables) and what a grammar forces it to produce.
"""

from __future__ import annotations

import json

import pytest

from llmhost.engine.llamacpp import Model
from llmhost.engine.prompt import CompletionRequest, PromptBuilder
from llmhost.engine.sequence import Finished, TextChunk, ToolCallsChunk
from llmhost.errors import BadRequest
from tests.support.engine_harness import EngineHarness
from tests.support.tiny_gguf import tokenizer_with, write_tiny_llama

# Our own Hermes-style template: tools in the system turn, calls in <tool_call> tags.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% for t in tools %}{{ t.function.name }};{% endfor %}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
    "{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)
THINK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "<|im_start|>assistant\n{% if enable_thinking %}<think>\n{% else %}<think></think>{% endif %}"
    "{% if reasoning_effort %}[effort:{{ reasoning_effort }}]{% endif %}"
)
UNIT = {"type": "function", "function": {"name": "set_unit", "parameters": {
    "type": "object", "properties": {"unit": {"enum": ["C", "F"]}}, "required": ["unit"],
    "additionalProperties": False}}}
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def builder(model):
    return PromptBuilder(model, 512)


def request(**body) -> CompletionRequest:
    return CompletionRequest.from_json({"messages": HI, **body})


def test_tools_and_history_reach_the_template(builder):
    history = [*HI, {"role": "assistant", "content": "",
                     "tool_calls": [{"type": "function", "function": {"name": "set_unit", "arguments": {"unit": "C"}}}]}]
    text = builder.render(request(messages=history, template=TOOLS_TEMPLATE, tools=[UNIT]))
    assert "set_unit;" in text
    assert '<tool_call>{"name": "set_unit", "arguments": {"unit": "C"}}</tool_call>' in text


@pytest.mark.parametrize(
    "think, tail",
    [
        pytest.param(True, "<think>\n", id="on"),
        pytest.param(False, "<think></think>", id="off"),
        pytest.param("high", "<think>\n[effort:high]", id="level"),
    ],
)
def test_think_becomes_the_templates_switch(builder, think, tail):
    assert builder.render(request(template=THINK_TEMPLATE, think=think)).endswith(tail)


def test_thinking_opened_by_the_prompt_is_split_from_the_answer(model):
    harness = EngineHarness(model, ctx_size=256, parallel=1)
    try:
        sink = harness.run({"messages": HI, "template": THINK_TEMPLATE, "think": True,
                            "options": {"temperature": 0, "num_predict": 12}})
    finally:
        harness.close()
    thinking = "".join(o.text for o in sink.outputs if type(o).__name__ == "ThinkingChunk")
    assert thinking and sink.text == "", "everything after an opened <think> is thinking until it closes"


@pytest.fixture(scope="module")
def fim_model(tmp_path_factory, tiny_tokenizer):
    tokenizer = tokenizer_with(tiny_tokenizer, extra_tokens=("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))
    path = write_tiny_llama(tmp_path_factory.mktemp("fim") / "fim.gguf", tokenizer=tokenizer)
    m = Model(path)
    yield m
    m.close()


def test_suffix_builds_a_prefix_suffix_middle_prompt(fim_model):
    builder = PromptBuilder(fim_model, 256)
    pre, suf, mid = fim_model.fim_tokens()
    tokens = builder.tokens(CompletionRequest.from_json({"prompt": "def f(", "suffix": "return 1"}))
    prefix = fim_model.tokenize("def f(", add_special=False, parse_special=False).tolist()
    suffix = fim_model.tokenize("return 1", add_special=False, parse_special=False).tolist()
    assert tokens.tolist()[-(len(prefix) + len(suffix) + 3):] == [pre, *prefix, suf, *suffix, mid]


def test_suffix_on_a_model_without_fim_tokens_is_refused(builder):
    with pytest.raises(BadRequest, match="fill-in-the-middle"):
        builder.tokens(CompletionRequest.from_json({"prompt": "def f(", "suffix": "return 1"}))


def test_context_continues_from_earlier_tokens_with_one_bos(builder, model):
    fresh = builder.tokens(CompletionRequest.from_json({"prompt": "and then"}))
    earlier = [int(t) for t in model.tokenize("Once upon a time", add_special=True)]
    tokens = builder.tokens(CompletionRequest.from_json({"prompt": "and then", "context": earlier}))
    skip = int(model.add_bos)
    assert tokens.tolist() == earlier + fresh.tolist()[skip:]
    with pytest.raises(BadRequest, match="token ids"):
        builder.tokens(CompletionRequest.from_json({"prompt": "x", "context": [model.n_vocab + 5]}))


def test_final_line_carries_the_context_when_asked(model):
    harness = EngineHarness(model, ctx_size=256, parallel=1)
    try:
        sink = harness.run({"prompt": "Hello", "return_context": True, "options": {"temperature": 0,
                                                                                "num_predict": 4}})
    finally:
        harness.close()
    final = sink.final
    assert isinstance(final, Finished) and final.context is not None
    assert len(final.context) == final.prompt_eval_count + final.prompt_cached_count + final.eval_count


@pytest.mark.parametrize(
    "choice",
    [pytest.param("required", id="required"), pytest.param({"name": "set_unit"}, id="named")],
)
def test_forced_tool_choice_makes_even_random_weights_call_with_valid_arguments(model, choice):
    harness = EngineHarness(model, ctx_size=256, parallel=1)
    try:
        sink = harness.run({"messages": HI, "template": TOOLS_TEMPLATE, "tools": [UNIT], "tool_choice": choice,
                            "parallel_tool_calls": False, "options": {"temperature": 0, "num_predict": 60}})
    finally:
        harness.close()
    calls = [c for o in sink.outputs if isinstance(o, ToolCallsChunk) for c in o.calls]
    assert [c["function"]["name"] for c in calls] == ["set_unit"], sink.outputs
    assert calls[0]["function"]["arguments"]["unit"] in ("C", "F")
    assert "<tool_call>" not in "".join(o.text for o in sink.outputs if isinstance(o, TextChunk))


@pytest.mark.parametrize(
    "body, message",
    [
        pytest.param({"tools": "x"}, '"tools"', id="tools-type"),
        pytest.param({"think": "extreme"}, '"think"', id="think-level"),
        pytest.param({"tool_choice": "sometimes"}, '"tool_choice"', id="tool-choice"),
        pytest.param({"context": [1, "a"]}, '"context"', id="context-ids"),
        pytest.param({"logprobs": 21}, '"logprobs"', id="logprobs-range"),
        pytest.param({"logit_bias": {"x": 1}}, '"logit_bias"', id="logit-bias-key"),
    ],
)
def test_bad_agent_fields_are_rejected_by_the_runner(body, message):
    with pytest.raises(BadRequest, match=message):
        CompletionRequest.from_json({"messages": HI, **body})


def test_format_and_a_forced_tool_call_do_not_combine(builder):
    from tests.support.engine_harness import Collector

    req = request(template=TOOLS_TEMPLATE, tools=[UNIT], tool_choice="required", format="json")
    with pytest.raises(BadRequest, match="format"):
        builder.sequence(req, Collector())


def test_tool_call_arguments_json_round_trips(builder):
    # The template's tojson must keep non-ASCII text readable, as HF's does.
    history = [*HI, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "set_unit", "arguments": {"city": "Zürich"}}}]}]
    text = builder.render(request(messages=history, template=TOOLS_TEMPLATE, tools=[UNIT]))
    assert json.dumps({"city": "Zürich"}, ensure_ascii=False) in text

