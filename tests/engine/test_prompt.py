"""Request validation, sampling options, prompt truncation, kept tokens and template choice."""

from __future__ import annotations

import numpy as np
import pytest

from llmhost.engine.llamacpp import Model
from llmhost.engine.prompt import CompletionRequest, PromptBuilder, fit_context
from llmhost.engine.sampling import SamplingParams, grammar_for_format
from llmhost.errors import BadRequest, InvalidOption


@pytest.mark.parametrize(
    "body, message",
    [
        pytest.param([], "JSON object", id="not-an-object"),
        pytest.param({}, "exactly one", id="neither"),
        pytest.param({"prompt": "a", "messages": []}, "exactly one", id="both"),
        pytest.param({"prompt": 3}, '"prompt" must be a string', id="prompt-type"),
        pytest.param({"prompt": "a", "priority": "high"}, '"priority"', id="priority-type"),
        pytest.param({"prompt": "a", "truncate": "no"}, '"truncate"', id="truncate-type"),
        pytest.param({"prompt": "a", "options": {"temperature": "hot"}}, "temperature", id="option-type"),
        pytest.param({"prompt": "a", "options": {"mirostat": 3}}, "mirostat", id="mirostat-range"),
        pytest.param({"prompt": "a", "format": "yaml"}, "format", id="format-unknown"),
        pytest.param({"prompt": "a", "template": 1}, "template", id="template-type"),
    ],
)
def test_bad_requests_are_rejected_with_a_clear_message(body, message):
    with pytest.raises(BadRequest) as info:
        CompletionRequest.from_json(body)
    assert message in str(info.value)


def test_options_get_ollama_defaults_and_request_values():
    req = CompletionRequest.from_json({"prompt": "a", "options": {"temperature": 0, "stop": "END", "num_ctx": 8}})
    assert req.params.temperature == 0.0
    assert req.params.stop == ("END",)
    assert req.params.top_k == 40 and req.params.repeat_penalty == 1.1
    assert req.truncate is True and req.priority == 0 and req.grammar is None


def test_sampling_params_reject_negative_temperature():
    with pytest.raises(InvalidOption):
        SamplingParams.from_options({"temperature": -1})


@pytest.mark.parametrize(
    "fmt, expect",
    [
        pytest.param(None, None, id="none"),
        pytest.param("", None, id="empty"),
        pytest.param("json", "root", id="json"),
        pytest.param({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}, "root", id="schema"),
    ],
)
def test_format_becomes_a_grammar(fmt, expect):
    grammar = grammar_for_format(fmt)
    assert (grammar is None) if expect is None else (expect in grammar)


def test_invalid_schema_is_a_bad_request():
    with pytest.raises(BadRequest, match="invalid JSON schema"):
        grammar_for_format({"type": "object", "properties": {"a": {"type": "bogus"}}})


def tokens(n: int, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.int32)


def test_prompt_that_fits_is_untouched():
    prompt = tokens(99)
    assert fit_context(prompt, 100, num_keep=-1, num_predict=-1, truncate=True) is prompt


def test_long_prompt_is_cut_from_the_front_keeping_num_keep():
    out = fit_context(tokens(300), 100, num_keep=5, num_predict=10, truncate=True)
    assert len(out) == 90  # room for num_predict
    assert out[:5].tolist() == [0, 1, 2, 3, 4]
    assert out[-1] == 299 and out[5] == 300 - 85


def test_unbounded_generation_leaves_a_quarter_of_the_context():
    out = fit_context(tokens(300), 100, num_keep=-1, num_predict=-1, truncate=True)
    assert len(out) == 75 and out[-1] == 299


def test_leading_bos_is_kept():
    prompt = np.concatenate([[7], tokens(200, 100)]).astype(np.int32)
    out = fit_context(prompt, 100, num_keep=-1, num_predict=-1, truncate=True, bos=7)
    assert out[0] == 7 and out[-1] == 299


def test_truncate_false_is_an_error():
    with pytest.raises(BadRequest, match="does not fit"):
        fit_context(tokens(100), 100, num_keep=0, num_predict=-1, truncate=False)


# --- with the tiny model's tokenizer and template ---------------------------------------------------


@pytest.fixture(scope="module")
def builder(tiny_model):
    model = Model(tiny_model)
    yield PromptBuilder(model, 256)
    model.close()


SYSTEM = {"role": "system", "content": "You are terse."}
USER = {"role": "user", "content": "Hi there"}


def request(messages=None, **body) -> CompletionRequest:
    if messages is None:
        return CompletionRequest.from_json({"prompt": "Hi there", **body})
    return CompletionRequest.from_json({"messages": messages, **body})


def test_kept_tokens_default_to_the_rendered_system_prompt(builder):
    prepared = builder.prepare(request([SYSTEM, USER]))
    tokens, keep = prepared.tokens, prepared.keep
    system_only = builder.model.tokenize("<|im_start|>system\nYou are terse.<|im_end|>\n", add_special=True)
    assert keep == len(system_only) and tokens[:keep].tolist() == system_only.tolist()


@pytest.mark.parametrize(
    "req, keep",
    [
        pytest.param(lambda: request([USER]), 0, id="no-system-message"),  # SmolLM2 adds no BOS
        pytest.param(lambda: request(), 0, id="raw-prompt"),
        pytest.param(lambda: request([SYSTEM, USER], options={"num_keep": 3}), 3, id="explicit-num_keep"),
    ],
)
def test_kept_tokens_rule(builder, req, keep):
    assert builder.prepare(req()).keep == keep


def test_a_go_template_is_rendered_not_replaced(builder):
    go = "{{ if .System }}<|system|>{{ .System }}{{ end }}{{ range .Messages }}[{{ .Content }}]{{ end }}"
    assert builder.render(request([SYSTEM, USER], template=go)) == f"<|system|>{SYSTEM['content']}" \
        f"[{SYSTEM['content']}][{USER['content']}]"


def test_a_broken_go_template_is_an_error_with_its_position(builder):
    with pytest.raises(BadRequest, match=r"invalid Go template .* at 1:14: function \"nope\" not defined"):
        builder.render(request([USER], template="{{ .Prompt | nope }}"))


def test_a_broken_jinja_template_is_still_an_error(builder):
    with pytest.raises(BadRequest, match="invalid chat template"):
        builder.render(request([USER], template="{% if %}"))
