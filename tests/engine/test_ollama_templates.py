"""Ollama's use of Go templates: the two ways a template is run, the typed values, and what Ollama
reads from a template (tool-call tag, thinking tags, variables). Expected prompts derived by hand."""

from __future__ import annotations

import pytest

from llmhost.engine.gotemplate import OllamaTemplate, Values, thinking_tags, tool_call_tag
from llmhost.engine.parsing import detect_tool_format
from llmhost.engine.parsing.thinking import thinking_tags as parser_thinking_tags
from llmhost.engine.parsing.tool_calls import ToolFormat
from llmhost.engine.templates import GoChatTemplate

SYSTEM = {"role": "system", "content": "Be kind."}
HI = {"role": "user", "content": "Hi"}
HELLO = {"role": "assistant", "content": "Hello!"}
AGAIN = {"role": "user", "content": "Again?"}

# An old-style template: one turn per execution.
LEGACY = "{{ if .System }}<s>{{ .System }}</s>{{ end }}<u>{{ .Prompt }}</u><a>{{ .Response }}</a>"


def run(source: str, **values) -> str:
    return OllamaTemplate(source).execute(Values(**values))


@pytest.mark.parametrize(
    "messages, expected",
    [
        pytest.param([HI], "<u>Hi</u><a>", id="one-turn-stops-at-the-response"),
        pytest.param([SYSTEM, HI], "<s>Be kind.</s><u>Hi</u><a>", id="system-joins-the-turn"),
        pytest.param([SYSTEM, HI, HELLO, AGAIN], "<s>Be kind.</s><u>Hi</u><a>Hello!</a><u>Again?</u><a>",
                     id="earlier-turns-whole"),
        pytest.param([HI, HELLO], "<u>Hi</u><a>Hello!", id="a-last-assistant-turn-is-continued"),
        pytest.param([HI, HI], "<u>Hi\n\nHi</u><a>", id="same-role-messages-merge"),
        pytest.param([HI, {"role": "tool", "content": "42"}], "<u>Hi</u><a>", id="tool-results-are-left-out"),
    ],
)
def test_legacy_templates_run_turn_by_turn(messages, expected):
    assert run(LEGACY, messages=messages) == expected


def test_a_template_without_response_gets_one_appended():
    # No .Messages and no .Response: Ollama appends {{ .Response }}, so earlier answers are kept.
    assert run("[{{ .Prompt }}]", messages=[HI, HELLO, AGAIN]) == "[Hi]Hello![Again?]"


MESSAGES = "{{ .System }}|{{ range .Messages }}{{ .Role }}:{{ .Content }};{{ end }}"


@pytest.mark.parametrize(
    "messages, expected",
    [
        pytest.param([HI], "|user:Hi;", id="no-system"),
        pytest.param([SYSTEM, {"role": "system", "content": "Be brief."}, HI],
                     "Be kind.\n\nBe brief.|system:Be kind.\n\nBe brief.;user:Hi;", id="systems-join-and-merge"),
        pytest.param([HI, {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}],
                     "|user:Hi;tool:1;tool:2;", id="tool-results-stay-apart"),
        pytest.param([HI, AGAIN, HELLO], "|user:Hi\n\nAgain?;assistant:Hello!;", id="consecutive-users-merge"),
    ],
)
def test_messages_templates_see_the_whole_conversation(messages, expected):
    assert run(MESSAGES, messages=messages) == expected


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather <now>",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "unit": {"type": "string", "enum": ["C", "F"], "default": "C"},
        "city": {"type": ["string", "null"], "description": "City"}}}}}
CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call_1", "function": {"name": "get_weather", "arguments": {"days": 2, "city": "Paris"}}}]}
RESULT = {"role": "tool", "content": "18", "tool_name": "get_weather", "tool_call_id": "call_1"}


@pytest.mark.parametrize(
    "source, expected",
    [
        pytest.param("{{ .Tools }}", '[{"type":"function","function":{"name":"get_weather","description":'
                     '"Weather \\u003cnow\\u003e","parameters":{"type":"object","required":["city"],"properties":'
                     '{"city":{"type":["string","null"],"description":"City"},"unit":{"type":"string","enum":'
                     '["C","F"]}}}}}]', id="tools-print-as-ollamas-json"),
        pytest.param("{{ range .Tools }}{{ .Function.Name }}({{ range $k, $v := .Function.Parameters.Properties }}"
                     "{{ $k }}: {{ toTypeScriptType $v }}, {{ end }}){{ end }}",
                     "get_weather(city: string | null, unit: string, )", id="properties-in-key-order"),
        pytest.param("{{ range .Messages }}{{ range .ToolCalls }}{{ .ID }} {{ .Function.Name }} "
                     "{{ .Function.Arguments }} {{ .Function.Index }}{{ end }}{{ end }}",
                     'call_1 get_weather {"city":"Paris","days":2} 0', id="tool-calls"),
        pytest.param("{{ range .Messages }}{{ with .ToolCalls }}{{ range $k, $v := (index . 0).Function.Arguments }}"
                     "{{ $k }}={{ $v }} {{ end }}{{ end }}{{ end }}", "city=Paris days=2 ", id="arguments-range"),
        pytest.param('{{ range .Messages }}{{ if eq .Role "tool" }}{{ .ToolName }}/{{ .ToolCallID }}: '
                     "{{ .Content }}{{ end }}{{ end }}", "get_weather/call_1: 18", id="tool-results"),
        pytest.param("{{ if .Tools }}tools{{ else }}none{{ end }}", "tools", id="tools-are-true"),
    ],
)
def test_tools_and_calls_are_typed_as_ollamas(source, expected):
    # Only a template that reads .Messages is given .Tools (a legacy one gets the turn's texts alone).
    source += "{{ range .Messages }}{{ end }}"
    assert run(source, messages=[HI, CALL, RESULT], tools=[WEATHER]) == expected


def test_legacy_templates_get_no_tools():
    assert run("{{ .Tools }}|{{ .Prompt }}", messages=[HI], tools=[WEATHER]) == "<no value>|Hi"


def test_no_tools_prints_null_and_is_false():
    assert run("{{ .Tools }}{{ if .Tools }}!{{ end }}{{ range .Messages }}{{ .ToolCalls }}{{ end }}",
               messages=[HI]) == "null[]"


@pytest.mark.parametrize(
    "think, expected",
    [
        pytest.param(None, "false||false", id="unset"),
        pytest.param(False, "false||true", id="off"),
        pytest.param(True, "true|medium|true", id="on"),
        pytest.param("high", "true|high|true", id="level"),
    ],
)
def test_think_values(think, expected):
    source = "{{ .Think }}|{{ .ThinkLevel }}|{{ .IsThinkSet }}{{ range .Messages }}{{ end }}"
    assert run(source, messages=[], think=think) == expected


def test_a_prompt_and_suffix_fill_in_the_middle():
    source = "{{ if .Suffix }}<PRE>{{ .Prompt }}<SUF>{{ .Suffix }}<MID>{{ else }}{{ .Prompt }}{{ end }}"
    assert run(source, prompt="def f(", suffix="return x") == "<PRE>def f(<SUF>return x<MID>"
    assert GoChatTemplate(source).takes_suffix


def test_vars_are_ollamas_lowercased_names():
    template = OllamaTemplate('{{ define "t" }}{{ .Suffix }}{{ end }}{{ range $m := $.Messages }}{{ $m.Role }}{{ end }}')
    assert {"suffix", "messages", "$", "$m", "role"} <= template.vars


TOOL_TEMPLATES = {
    "hermes": ("{{ range .Messages }}{{ if .ToolCalls }}<tool_call>\n{{ range .ToolCalls }}{{ json .Function }}"
               "{{ end }}</tool_call>{{ end }}{{ end }}", "<tool_call>", ToolFormat.HERMES),
    "mistral": ("{{- range .Messages }}{{- if .ToolCalls }}[TOOL_CALLS] [{{- range .ToolCalls }}"
                '{"name": "{{ .Function.Name }}"}{{ end }}]{{ end }}{{ end }}', "[TOOL_CALLS] [", ToolFormat.MISTRAL),
    "bare json": ('{{ range .Messages }}{{ if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", '
                  '"parameters": {{ .Function.Arguments }}}{{ end }}{{ end }}{{ end }}', "{", ToolFormat.LLAMA3),
    "no tool calls": ("{{ range .Messages }}{{ .Content }}{{ end }}", "{", ToolFormat.JSON),
}


@pytest.mark.parametrize("source, tag, fmt", TOOL_TEMPLATES.values(), ids=TOOL_TEMPLATES.keys())
def test_tool_call_format_is_read_from_the_tool_calls_block(source, tag, fmt):
    assert tool_call_tag(OllamaTemplate(source)) == tag
    assert detect_tool_format(source) is fmt


@pytest.mark.parametrize(
    "source, tags",
    [
        pytest.param("{{ range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ end }}",
                     ("<think>", "</think>"), id="think"),
        pytest.param("{{ range $i, $m := .Messages }}[THINK]{{ .Thinking }}[/THINK]{{ end }}",
                     ("[THINK]", "[/THINK]"), id="around-the-field"),
        pytest.param("{{ .Thinking }}", ("", ""), id="outside-a-range-over-messages"),
    ],
)
def test_thinking_tags_are_inferred_as_ollama_does(source, tags):
    assert thinking_tags(OllamaTemplate(source)) == tags
    if tags[0]:
        assert parser_thinking_tags(source) == tags


def test_the_chat_interface_passes_tools_and_think_through():
    template = GoChatTemplate("{{ len .Tools }} {{ .Think }} {{ .ThinkLevel }}{{ .Messages }}")
    assert template.render([], tools=[WEATHER], enable_thinking=True, reasoning_effort="low") == "1 true low[]"
    assert template.render([], enable_thinking=False) == "0 false []"
