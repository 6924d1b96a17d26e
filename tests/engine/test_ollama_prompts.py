"""Prompts of Go-template models, token for token, through the whole path: an Ollama store's model
→ the daemon's runner body → the runner's prompt → the tokens the engine evaluates.

Expected prompts are derived by hand from Ollama's rules (tests/support/ollama_store.py has the
templates); the tiny model carries SmolLM2's tokenizer, so the tokens are SmolLM2's.
"""

from __future__ import annotations

import json

import pytest

from llmhost.api.types import ChatRequest, GenerateRequest
from llmhost.daemon.inference import resolve_think
from llmhost.daemon.runner_request import runner_body
from llmhost.engine.prompt import CompletionRequest, PromptBuilder
from llmhost.registry.create import create_model
from llmhost.registry.modelfile import parse_modelfile
from llmhost.registry.store import Store
from tests.support.engine_harness import EngineHarness
from tests.support.ollama_store import CHATTY_SYSTEM, build_ollama_store

CHATTY_HISTORY = (
    f"<|im_start|>system\n{CHATTY_SYSTEM}<|im_end|>\n"
    "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\nI am Chatty.<|im_end|>\n"
)
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "description": "City name"}, "days": {"type": "integer"}},
    "required": ["city"]}}}
WEATHER_JSON = ('{"type":"function","function":{"name":"get_weather","description":"Weather in a city","parameters":'
                '{"type":"object","required":["city"],"properties":{"city":{"type":"string","description":"City name"},'
                '"days":{"type":"integer"}}}}}')
CALL_HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                      "arguments": {"city": "Paris", "days": 2}}}]},
    {"role": "tool", "content": "18 C"},
]

CASES = {
    "chat": ("chatty", {"messages": [{"role": "user", "content": "Hi there"}]},
             CHATTY_HISTORY + "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"),
    "chat without thinking": ("chatty", {"messages": [{"role": "user", "content": "Hi there"}], "think": False},
                              CHATTY_HISTORY + "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
                              "<think>\n\n</think>\n\n"),
    "tools and a call round": (
        "chatty", {"messages": CALL_HISTORY, "tools": [WEATHER]},
        f"<|im_start|>system\n{CHATTY_SYSTEM}\n\n# Tools\n<tools>\n{WEATHER_JSON}\n</tools>\n"
        'Call a tool as <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>\n'
        "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\nI am Chatty.<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris","days":2}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>18 C</tool_response><|im_end|>\n<|im_start|>assistant\n"),
    "legacy generate": ("legacy:7b", {"prompt": "Why?"}, "[INST] <<SYS>>Answer briefly.<</SYS>>\n\nWhy? [/INST] "),
    "legacy chat, turn by turn": (
        "legacy:7b", {"messages": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
                                   {"role": "user", "content": "C"}]},
        "[INST] <<SYS>>Answer briefly.<</SYS>>\n\nA [/INST] B</s>[INST] C [/INST] "),
}


@pytest.fixture(scope="module")
def ollama_store(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("ollama") / "models"
    build_ollama_store(root, tiny_model)
    return Store(root)


def completion_body(store: Store, name: str, request: dict) -> dict:
    """What the daemon sends a runner for ``request`` to the stored model ``name``."""
    record = store.load(name)
    body = {"model": name, **request}
    parsed = ChatRequest.from_json(body) if "messages" in request else GenerateRequest.from_json(body)
    return json.loads(json.dumps(runner_body(record, parsed, {}, resolve_think(record, parsed))))


@pytest.mark.parametrize("name, request_body, expected", CASES.values(), ids=CASES.keys())
def test_prompt_is_ollamas_token_for_token(model, ollama_store, name, request_body, expected):
    prepared = PromptBuilder(model, 2048).prepare(CompletionRequest.from_json(completion_body(ollama_store, name,
                                                                                               request_body)))
    assert prepared.text == expected
    assert prepared.tokens.tolist() == model.tokenize(expected, add_special=True, parse_special=True).tolist()


def evaluated_prompt(model, body: dict) -> list[int]:
    """The prompt tokens the engine evaluated for ``body`` (from the context it returns)."""
    harness = EngineHarness(model, ctx_size=1024, parallel=1)
    try:
        final = harness.run({**body, "return_context": True, "options": {"num_predict": 1, "temperature": 0}}).final
    finally:
        harness.close()
    n_prompt = final.prompt_eval_count + final.prompt_cached_count
    return list(final.context[:n_prompt])


def test_the_engine_evaluates_exactly_that_prompt(model, ollama_store):
    name, request_body, expected = CASES["tools and a call round"]
    tokens = evaluated_prompt(model, completion_body(ollama_store, name, request_body))
    assert tokens == model.tokenize(expected, add_special=True, parse_special=True).tolist()


MODELFILE = '''FROM ./tiny.gguf
TEMPLATE """{{ if .System }}### System: {{ .System }}
{{ end }}### User: {{ .Prompt }}
### Assistant: {{ .Response }}"""
SYSTEM Keep it short.
'''


def test_a_go_template_in_a_modelfile_changes_the_prompt(model, tiny_model, tmp_path):
    store = Store(tmp_path / "models")
    digest, _ = store.import_file(tiny_model)
    modelfile = parse_modelfile(MODELFILE)
    create_model(store, "mf", files={"tiny.gguf": digest}, template=modelfile.template, system=modelfile.system)
    create_model(store, "plain", files={"tiny.gguf": digest}, system=modelfile.system)
    chat = {"messages": [{"role": "user", "content": "Hi"}]}
    tokens = evaluated_prompt(model, completion_body(store, "mf", chat))
    expected = "### System: Keep it short.\n### User: Hi\n### Assistant: "
    assert tokens == model.tokenize(expected, add_special=True, parse_special=True).tolist()
    assert tokens != evaluated_prompt(model, completion_body(store, "plain", chat)), "the GGUF's template differs"
