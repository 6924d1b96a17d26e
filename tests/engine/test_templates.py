"""Chat templates render like Hugging Face's apply_chat_template and fail with clear errors."""

from __future__ import annotations

import pytest
from gguf import GGUFReader

from llmhost.engine.templates import CHATML, ChatTemplate, is_go_template, validate_messages
from llmhost.errors import BadRequest, TemplateError


@pytest.fixture(scope="module")
def smollm2_template(smollm2_path) -> ChatTemplate:
    source = GGUFReader(smollm2_path).fields["tokenizer.chat_template"].contents()
    return ChatTemplate(source, bos_token="<|im_start|>", eos_token="<|im_end|>")


def test_smollm2_template_adds_its_default_system_prompt(smollm2_template):
    text = smollm2_template.render([{"role": "user", "content": "Hi"}])
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_smollm2_template_uses_the_given_system_prompt_and_history(smollm2_template):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "3+3?"},
    ]
    text = smollm2_template.render(messages)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\n3+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_generation_prompt_can_be_left_out(smollm2_template):
    text = smollm2_template.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n")


def test_chatml_fallback():
    text = ChatTemplate(CHATML).render([{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    "source, expected",
    [
        pytest.param("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}", "<s>Hi</s>", id="bos-eos"),
        pytest.param("{{ messages | tojson }}", '[{"role": "user", "content": "Hi"}]', id="tojson"),
        pytest.param("{{ {'k': 'ü'} | tojson }}", '{"k": "ü"}', id="tojson-keeps-unicode"),
        pytest.param("{% for m in messages %}{% break %}{% endfor %}ok", "ok", id="loopcontrols"),
        pytest.param("{% generation %}{{ messages[0].content }}{% endgeneration %}", "Hi", id="generation-tag"),
        pytest.param("{{ strftime_now('%Y') | length }}", "4", id="strftime_now"),
        pytest.param("  {% if true %}\nx{% endif %}", "x", id="trim-and-lstrip-blocks"),
    ],
)
def test_hugging_face_conventions(source, expected):
    template = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    assert template.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False) == expected


@pytest.mark.parametrize(
    "source, message",
    [
        pytest.param("{% for m in messages %}", "invalid chat template", id="syntax-error"),
        pytest.param("{{ raise_exception('roles must alternate') }}", "roles must alternate", id="raise_exception"),
        pytest.param("{{ messages[0].content + 1 }}", "chat template", id="type-error"),
        pytest.param("{{ ''.__class__.__mro__ }}", "chat template", id="sandbox-blocks-dunder"),
    ],
)
def test_failing_templates_raise_a_bad_request(source, message):
    with pytest.raises(TemplateError) as info:
        ChatTemplate(source).render([{"role": "user", "content": "Hi"}])
    assert message in str(info.value)
    assert isinstance(info.value, BadRequest)


def test_template_cannot_mutate_messages():
    template = ChatTemplate("{% set _ = messages.append({'role': 'x'}) %}{{ messages | length }}")
    with pytest.raises(TemplateError):
        template.render([{"role": "user", "content": "Hi"}])


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param("hi", id="not-a-list"),
        pytest.param([{"content": "no role"}], id="missing-role"),
        pytest.param([{"role": "user", "content": 3}], id="content-not-string"),
    ],
)
def test_invalid_messages_are_rejected(messages):
    with pytest.raises(BadRequest):
        validate_messages(messages)


def test_null_content_is_an_empty_string():
    assert validate_messages([{"role": "assistant", "content": None}]) == [{"role": "assistant", "content": ""}]


@pytest.mark.parametrize(
    "source, go",
    [
        pytest.param("{{ .Prompt }}", True, id="go-field"),
        pytest.param("{{- range .Messages }}{{ .Content }}{{ end }}", True, id="go-range"),
        pytest.param("{{ if .System }}<|system|>{{ .System }}{{ end }}", True, id="go-if"),
        pytest.param("{{- if gt (len .Messages) 0 }}x{{- end }}", True, id="go-if-call"),
        pytest.param("{{ $.Tools }}", True, id="go-variable"),
        pytest.param("{{ index .Messages 0 }}", True, id="go-function-of-a-field"),
        pytest.param("{{ messages | length }}{{ message.content }}", False, id="jinja-attribute"),
        pytest.param("{% for m in messages %}{{ m.content }}{% endfor %}", False, id="jinja-loop"),
        pytest.param("{{ range(3) | list }}", False, id="jinja-range-call"),
        pytest.param("{{ x if y else z }}{{ end_token }}", False, id="jinja-conditional-expression"),
        pytest.param(CHATML, False, id="chatml"),
    ],
)
def test_go_templates_are_told_apart_from_jinja(source, go):
    assert is_go_template(source) is go
