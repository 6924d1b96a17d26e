"""Capabilities as Ollama lists them, from a model's template, vocabulary and metadata.

The templates are written here in each family's style (not copied from any model); the GGUFs are tiny
files with a made-up vocabulary, so nothing needs a real model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from llmhost.errors import BadRequest
from llmhost.registry.capabilities import capabilities, go_quote, missing_capabilities, require, thinking_levels
from llmhost.registry.create import create_model
from llmhost.registry.gguf_meta import read_gguf_info
from llmhost.registry.record import ModelRecord
from llmhost.registry.store import Store
from tests.support.tiny_gguf import small_tokenizer, tokenizer_with, write_tiny_llama

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Hermes / Qwen 2.5: tool signatures in the system turn, calls inside <tool_call> tags.
HERMES = """{%- if tools %}<|im_start|>system
{{ messages[0].content if messages[0].role == 'system' else 'You are a helpful assistant.' }}

You can call functions. Their signatures:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
Answer a call as <tool_call>{"name": "...", "arguments": {...}}</tool_call><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{%- for call in message.tool_calls %}
<tool_call>{{ call.function | tojson }}</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>{{ message.content }}</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

# Llama 3.x: `tools` defaulted by the template itself, calls as a bare JSON object after <|python_tag|>.
LLAMA3 = """{{- bos_token }}
{%- if tools is not defined %}{%- set tools = none %}{%- endif %}
<|start_header_id|>system<|end_header_id|>

{% if tools is not none %}Environment: ipython
{% endif %}You are a helpful assistant.<|eot_id|>
{%- for message in messages %}
{%- if message.role == 'user' and loop.last and tools is not none %}<|start_header_id|>user<|end_header_id|>

Call a function by answering {"name": function name, "parameters": arguments}.
{% for tool in tools %}{{ tool | tojson(indent=2) }}
{% endfor %}{{ message.content }}<|eot_id|>
{%- elif message.tool_calls %}<|start_header_id|>assistant<|end_header_id|>

<|python_tag|>{{ message.tool_calls[0].function | tojson }}<|eom_id|>
{%- elif message.role == 'tool' %}<|start_header_id|>ipython<|end_header_id|>

{{ message.content }}<|eot_id|>
{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>

{{ message.content }}<|eot_id|>
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""

# Mistral: tools announced before the last user turn, calls after [TOOL_CALLS].
MISTRAL = """{{- bos_token }}
{%- for message in messages %}
{%- if message['role'] == 'user' %}
{%- if tools and loop.last %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}
[INST]{{ message['content'] }}[/INST]
{%- elif message['role'] == 'assistant' and message['tool_calls'] %}[TOOL_CALLS]{{ message['tool_calls'] | tojson }}{{ eos_token }}
{%- elif message['role'] == 'tool' %}[TOOL_RESULTS]{{ message['content'] }}[/TOOL_RESULTS]
{%- else %}{{ message['content'] }}{{ eos_token }}
{%- endif %}
{%- endfor %}"""

# Qwen 3 style: tools, reasoning kept in <think>, switched off by enable_thinking=false.
QWEN3 = HERMES.replace("{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", """
{%- if add_generation_prompt %}<|im_start|>assistant
{%- if enable_thinking is defined and enable_thinking is false %}
<think>

</think>
{% endif %}
{%- endif %}""").replace("{{ message.content }}<|im_end|>\n{% endif %}", """{%- set reasoning = '' %}
{%- if message.role == 'assistant' and '</think>' in message.content %}
{%- set reasoning = message.content.split('</think>')[0].split('<think>')[-1] %}
{%- endif %}{{ message.content }}<|im_end|>
{% endif %}""")

# Reasoning models with other switches: a level (gpt-oss style), a plain flag (Granite style), or only
# stripping earlier reasoning at </think> (DeepSeek R1 distills).
EFFORT = CHATML.replace("{% for message", "<|im_start|>system\nReasoning: {{ reasoning_effort | default('medium') }}"
                                          "<|im_end|>\n{% for message")
FLAG = "{%- if thinking %}<|im_start|>system\nThink step by step first.<|im_end|>\n{%- endif %}" + CHATML
SPLIT = CHATML.replace("{{ message['content'] }}", "{% set content = message['content'] %}"
                                                     "{% set content = content.split('</think>')[-1] %}{{ content }}")

# Words that only look like features: text, strings, attributes, locals.
LOOKALIKE = (
    "You have no tools. Do not think.\n{% set suffix_text = 'tools, suffix, enable_thinking' %}"
    "{% for message in messages %}{% set thinking = message['thinking'] %}{{ message.tools }}{{ message.content }}"
    "{% endfor %}"
)

# Ollama's Go templates (the registry's format).
GO_PLAIN = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ .Prompt }}"
GO_TOOLS = (
    "{{- if .Tools }}<|im_start|>system\n<tools>{{ range .Tools }}{{ . }}{{ end }}</tools><|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
GO_FIM = "{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>{{ else }}{{ .Prompt }}{{ end }}"
GO_THINK = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}"
    "{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ if and $.IsThinkSet (not $.Think) }}<think></think>{{ end }}"
)
GO_LEVELS = "{{ if .ThinkLevel }}Reasoning: {{ .ThinkLevel }}\n{{ end }}" + GO_THINK

TEMPLATES = {
    "chatml-nothing": (CHATML, ["completion"]),
    "hermes-tools": (HERMES, ["completion", "tools"]),
    "llama3-json-tools": (LLAMA3, ["completion", "tools"]),
    "mistral-tools": (MISTRAL, ["completion", "tools"]),
    "qwen3-tools-thinking": (QWEN3, ["completion", "tools", "thinking"]),
    "reasoning-effort": (EFFORT, ["completion", "thinking"]),
    "thinking-flag": (FLAG, ["completion", "thinking"]),
    "think-split": (SPLIT, ["completion", "thinking"]),
    "lookalike-words": (LOOKALIKE, ["completion"]),
    "jinja-suffix": ("{{ prefix }}{% if suffix %}<SUF>{{ suffix }}{% endif %}", ["completion", "insert"]),
    "go-plain": (GO_PLAIN, ["completion"]),
    "go-tools": (GO_TOOLS, ["completion", "tools"]),
    "go-fim": (GO_FIM, ["completion", "insert"]),
    "go-thinking": (GO_THINK, ["completion", "thinking"]),
}


@pytest.fixture(scope="module")
def plain_gguf(tmp_path_factory) -> Path:
    """A tiny GGUF with a made-up vocabulary and the ChatML template."""
    return write_tiny_llama(tmp_path_factory.mktemp("caps") / "plain.gguf", tokenizer=small_tokenizer(),
                            chat_template=CHATML)


def gguf_with(path: Path, *, extra_tokens=(), metadata=None, chat_template=CHATML) -> Path:
    fields = tokenizer_with(small_tokenizer(), extra_tokens=tuple(extra_tokens), metadata=metadata)
    return write_tiny_llama(path, tokenizer=fields, chat_template=chat_template)


def create(store: Store, name: str, *files: Path, template: str | None = None) -> ModelRecord:
    digests = {path.name: store.import_file(path)[0] for path in files}
    create_model(store, name, files=digests, template=template)
    return store.load(name)


@pytest.mark.parametrize("template, expected", TEMPLATES.values(), ids=TEMPLATES.keys())
def test_template_layer_decides_tools_thinking_and_suffix(store, plain_gguf, template, expected):
    assert capabilities(create(store, "m", plain_gguf, template=template)) == expected


@pytest.mark.parametrize("template, expected", [TEMPLATES["qwen3-tools-thinking"], TEMPLATES["mistral-tools"]],
                         ids=["qwen3", "mistral"])
def test_the_ggufs_own_template_counts_when_the_modelfile_has_none(store, tmp_path, template, expected):
    record = create(store, "m", gguf_with(tmp_path / "own.gguf", chat_template=template))
    assert record.template is None
    assert capabilities(record) == expected


def test_a_template_layer_replaces_the_ggufs_template(store, tmp_path):
    record = create(store, "m", gguf_with(tmp_path / "own.gguf", chat_template=QWEN3), template=CHATML)
    assert capabilities(record) == ["completion"]


FIM_VOCABULARIES = {
    "qwen": ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"),
    "starcoder": ("<fim_prefix>", "<fim_middle>", "<fim_suffix>"),
    "santacoder": ("<fim-prefix>", "<fim-middle>", "<fim-suffix>"),
    "codellama": ("▁<PRE>", "▁<MID>", "▁<SUF>"),
    "deepseek": ("<｜fim▁begin｜>", "<｜fim▁end｜>", "<｜fim▁hole｜>"),
}
FIRST_EXTRA = len(small_tokenizer()["tokenizer.ggml.tokens"].value)


@pytest.mark.parametrize("tokens", FIM_VOCABULARIES.values(), ids=FIM_VOCABULARIES.keys())
def test_fill_in_middle_tokens_in_the_vocabulary_give_insert(store, tmp_path, tokens):
    record = create(store, "coder", gguf_with(tmp_path / "coder.gguf", extra_tokens=tokens))
    assert capabilities(record) == ["completion", "insert"]
    # prefix, suffix, middle: the order the engine asks for them, whatever the vocabulary's order
    assert record.info.fim_tokens == (FIRST_EXTRA, FIRST_EXTRA + 2, FIRST_EXTRA + 1)


FIM_METADATA = {
    "fim-ids": ({"tokenizer.ggml.fim_pre_token_id": 3, "tokenizer.ggml.fim_suf_token_id": 4,
                 "tokenizer.ggml.fim_mid_token_id": 5}, (3, 4, 5)),
    "deprecated-ids": ({"tokenizer.ggml.prefix_token_id": 6, "tokenizer.ggml.suffix_token_id": 7,
                        "tokenizer.ggml.middle_token_id": 8}, (6, 7, 8)),
    "out-of-range-id-falls-back-to-text": ({"tokenizer.ggml.fim_pre_token_id": 10_000,
                                            "tokenizer.ggml.fim_suf_token_id": 4,
                                            "tokenizer.ggml.fim_mid_token_id": 5}, None),
}


@pytest.mark.parametrize("metadata, ids", FIM_METADATA.values(), ids=FIM_METADATA.keys())
def test_fill_in_middle_ids_declared_in_the_metadata(tmp_path, metadata, ids):
    info = read_gguf_info(gguf_with(tmp_path / "m.gguf", metadata=metadata))
    assert info.fim_tokens == ids


def test_an_incomplete_set_of_fim_tokens_is_not_insert(store, tmp_path):
    record = create(store, "m", gguf_with(tmp_path / "m.gguf", extra_tokens=("<|fim_prefix|>", "<|fim_suffix|>")))
    assert record.info.fim_tokens is None
    assert capabilities(record) == ["completion"]


def test_embedding_model_declares_a_pooling_type(store, tmp_path):
    path = gguf_with(tmp_path / "embed.gguf", metadata={"llama.pooling_type": 1}, chat_template=QWEN3)
    assert capabilities(create(store, "embed", path)) == ["embedding"], "a template cannot make it chat"


def test_rank_pooling_makes_a_reranker_not_an_embedder_nor_a_chat_model(store, tmp_path):
    # As Qwen3-Reranker is converted: a decoder with a chat template and llama.cpp's RANK pooling (4).
    path = gguf_with(tmp_path / "rerank.gguf", metadata={"llama.pooling_type": 4}, chat_template=QWEN3)
    assert capabilities(create(store, "rerank", path)) == ["rerank"]


def test_embedding_only_architecture_without_a_pooling_type(store, plain_gguf):
    record = create(store, "m", plain_gguf)
    bert = dataclasses.replace(record, info=dataclasses.replace(record.info, architecture="nomic-bert"))
    assert capabilities(bert) == ["embedding"]


def test_vision_from_a_projector_layer_only(store, tmp_path, plain_gguf):
    projector = gguf_with(tmp_path / "mmproj.gguf", metadata={"general.type": "mmproj"})
    record = create(store, "seeing", plain_gguf, projector, template=HERMES)
    assert record.projector_path is not None
    assert capabilities(record) == ["completion", "vision", "tools"]
    # A vision encoder inside the model's file (what Ollama's own engine reads) is no use to
    # llama.cpp, which sees images only through a projector file: no vision without one.
    encoder = gguf_with(tmp_path / "encoder.gguf", metadata={"llama.vision.block_count": 2})
    assert capabilities(create(store, "built-in", encoder)) == ["completion"]


THINKING_LEVELS = {
    "reasoning-effort": (EFFORT, True),
    "go-think-level": (GO_LEVELS, True),
    "enable-thinking-only": (QWEN3, False),
    "go-think-only": (GO_THINK, False),
    "no-thinking": (CHATML, False),
}


@pytest.mark.parametrize("template, levels", THINKING_LEVELS.values(), ids=THINKING_LEVELS.keys())
def test_thinking_levels(store, plain_gguf, template, levels):
    record = create(store, "m", plain_gguf, template=template)
    assert thinking_levels(record) is levels
    assert "thinking" in capabilities(record) or not levels


@pytest.fixture
def plain(store, plain_gguf) -> ModelRecord:
    return create(store, "plain", plain_gguf)


REFUSALS = {
    "tools": (["completion", "tools"], "plain", "registry.ollama.ai/library/plain:latest does not support tools"),
    "insert": (["completion", "insert"], "plain", "registry.ollama.ai/library/plain:latest does not support insert"),
    "several-joined-by-newline": (["tools", "insert", "tools"], "plain",
                                  "registry.ollama.ai/library/plain:latest does not support tools\ninsert"),
    "thinking-first-quoted": (["tools", "thinking"], "PLAIN:latest", '"PLAIN:latest" does not support thinking'),
    "vision": (["vision"], "plain", "registry.ollama.ai/library/plain:latest does not support vision"),
}


@pytest.mark.parametrize("needed, asked_as, text", REFUSALS.values(), ids=REFUSALS.keys())
def test_require_refuses_with_ollamas_text(plain, needed, asked_as, text):
    with pytest.raises(BadRequest) as refused:
        require(plain, needed, asked_as)
    assert str(refused.value) == text and refused.value.status == 400


def test_require_names_a_model_from_another_host_in_full(store, plain_gguf):
    record = create(store, "hf.co/someone/Some-Model-GGUF:Q4_K_M", plain_gguf)
    with pytest.raises(BadRequest, match="^hf.co/someone/Some-Model-GGUF:Q4_K_M does not support tools$"):
        require(record, ["tools"], "hf.co/someone/Some-Model-GGUF:Q4_K_M")


@pytest.mark.parametrize("action", ["chat", "generate"])
def test_an_embedding_model_cannot_chat_or_generate(store, tmp_path, action):
    record = create(store, "embed", gguf_with(tmp_path / "e.gguf", metadata={"llama.pooling_type": 1}))
    with pytest.raises(BadRequest, match=f'^"embed" does not support {action}$'):
        require(record, ["completion", "tools"], "embed", action=action)
    require(record, ["embedding"], "embed")


def test_require_passes_and_missing_lists_nothing_when_all_are_there(store, plain_gguf):
    record = create(store, "agent", plain_gguf, template=QWEN3)
    require(record, ["completion", "tools", "thinking"], "agent")
    assert missing_capabilities(record, ["completion", "tools", "thinking", "insert"]) == ["insert"]


def test_an_unknown_capability_is_a_bug_not_a_users_400(plain):
    with pytest.raises(ValueError):
        missing_capabilities(plain, ["telepathy"])


@pytest.mark.parametrize("text, quoted", [
    ("tiny", '"tiny"'),
    ('a"b\\c', '"a\\"b\\\\c"'),
    ("tab\tnew\nbell\a", '"tab\\tnew\\nbell\\a"'),
    ("\x01\x7f", '"\\x01\\x7f"'),
    ("café\u00a0", '"café\\u00a0"'),
])
def test_go_quote_matches_go_percent_q(text, quoted):
    assert go_quote(text) == quoted
