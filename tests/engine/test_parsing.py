"""Output parsers (thinking, tool calls) fed as a stream, and the grammar that forces a tool call."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from llmhost.engine.llamacpp import Batch, Context, Model, SamplerChain
from llmhost.engine.parsing import OutputParser, Parsed, ToolFormat, detect_tool_format, make_parser, thinking_tags
from llmhost.engine.parsing.tool_grammar import tool_call_grammar
from llmhost.engine.sampling import SamplingParams, build_sampler
from llmhost.engine.templates import ChatTemplate
from llmhost.errors import BadRequest

# --- chat templates in each family's style (written for these tests) ---------------------------

HERMES = """{%- if tools %}<|im_start|>system
Functions you may call are listed in <tools></tools>:
<tools>{% for tool in tools %}
{{ tool | tojson }}{% endfor %}
</tools>
Call one by answering with <tool_call>
{"name": <name>, "arguments": <object>}
</tool_call><|im_end|>
{% endif %}
{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>
{{ c.function | tojson }}
</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

THINKING_HERMES = HERMES.replace(
    "<|im_start|>assistant\n{% endif %}",
    "<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}{% endif %}",
)

LLAMA3 = """{{ bos_token }}{% if tools %}<|start_header_id|>system<|end_header_id|>

Environment: ipython
To use a function, reply only with JSON {"name": function name, "parameters": object of arguments}.
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}<|eot_id|>{% endif %}
{%- for m in messages %}<|start_header_id|>{{ 'ipython' if m.role == 'tool' else m.role }}<|end_header_id|>

{{ m.content }}<|eot_id|>{% endfor %}<|start_header_id|>assistant<|end_header_id|>

"""

LLAMA3_PYTHON_TAG = """{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>

{% if m.tool_calls %}<|python_tag|>{{ m.tool_calls[0].function | tojson }}<|eom_id|>
{%- else %}{{ m.content }}<|eot_id|>{% endif %}{% endfor %}"""

MISTRAL = """{{ bos_token }}{% for m in messages %}
{%- if m.role == 'user' %}{% if tools and loop.last %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}
[INST]{{ m.content }}[/INST]
{%- elif m.tool_calls %}[TOOL_CALLS]{{ m.tool_calls | map(attribute='function') | list | tojson }}{{ eos_token }}
{%- else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}"""

PLAIN_TOOLS = """{% if tools %}System: you have these tools: {{ tools | tojson }}.
To use one, answer with a JSON object naming it and giving its arguments.
{% endif %}{% for m in messages %}{{ m.role | capitalize }}: {{ m.content }}
{% endfor %}Assistant:"""

THINKING_TAG = """{% for m in messages %}### {{ m.role }}
{% if m.thinking %}<thinking>{{ m.thinking }}</thinking>
{% endif %}{{ m.content }}
{% endfor %}### assistant
"""

MAGISTRAL = """{% for m in messages %}{% if m.role == 'user' %}[INST]{{ m.content }}[/INST]
{%- else %}{% if m.thinking %}[THINK]{{ m.thinking }}[/THINK]{% endif %}{{ m.content }}{{ eos_token }}{% endif %}
{%- endfor %}"""

CHATML_PROMPT = "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"


def call(name: str, **arguments) -> dict:
    return {"function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize(
    "template, expected",
    [
        pytest.param(HERMES, ToolFormat.HERMES, id="hermes"),
        pytest.param(THINKING_HERMES, ToolFormat.HERMES, id="qwen-thinking"),
        pytest.param(LLAMA3, ToolFormat.LLAMA3, id="llama3-ipython"),
        pytest.param(LLAMA3_PYTHON_TAG, ToolFormat.LLAMA3, id="llama3-python-tag"),
        pytest.param(MISTRAL, ToolFormat.MISTRAL, id="mistral"),
        pytest.param(PLAIN_TOOLS, ToolFormat.JSON, id="plain-json"),
        pytest.param("{% for m in messages %}{{ m.content }}{% endfor %}", ToolFormat.JSON, id="no-tools"),
    ],
)
def test_tool_format_is_detected_from_the_template(template, expected):
    assert detect_tool_format(template) is expected


@pytest.mark.parametrize(
    "template, expected",
    [
        pytest.param(THINKING_HERMES, ("<think>", "</think>"), id="think"),
        pytest.param(THINKING_TAG, ("<thinking>", "</thinking>"), id="thinking"),
        pytest.param(MAGISTRAL, ("[THINK]", "[/THINK]"), id="bracket-think"),
        pytest.param(HERMES, ("<think>", "</think>"), id="default"),
    ],
)
def test_thinking_markers_are_detected_from_the_template(template, expected):
    assert thinking_tags(template) == expected


# --- parsing: one table, every case fed whole, char by char and in random splits ---------------

WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
TIME = '{"name": "get_time", "arguments": {"zone": "UTC"}}'
PARIS, UTC = call("get_weather", city="Paris"), call("get_time", zone="UTC")
TOOLS_ONLY = dict(prompt=CHATML_PROMPT, think=None, tools=True)
OPENED = dict(prompt=CHATML_PROMPT + "<think>\n", think=True, tools=False)
NOT_OPENED = dict(prompt=CHATML_PROMPT, think=True, tools=False)

CASES = [
    # Hermes / Qwen
    pytest.param(HERMES, TOOLS_ONLY, f"<tool_call>\n{WEATHER}\n</tool_call>", "", "", [PARIS], id="hermes-one"),
    pytest.param(HERMES, TOOLS_ONLY, f"<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n{TIME}\n</tool_call>\n",
                 "", "", [PARIS, UTC], id="hermes-two"),
    pytest.param(HERMES, TOOLS_ONLY, f"Let me look.\n\n<tool_call>\n{WEATHER}\n</tool_call>\nOne moment.",
                 "Let me look.\nOne moment.", "", [PARIS], id="hermes-content-around"),
    pytest.param(HERMES, TOOLS_ONLY,
                 '<tool_call>\n{"name": "run", "arguments": "{\\"code\\": \\"if (a) { return \\\\\\"}\\\\\\" }\\"}"}\n'
                 "</tool_call>", "", "", [call("run", code='if (a) { return "}" }')], id="hermes-arguments-as-string"),
    pytest.param(HERMES, TOOLS_ONLY,
                 '<tool_call>{"name": "echo", "arguments": {"text": "</tool_call> {[\\"x"}}</tool_call>',
                 "", "", [call("echo", text='</tool_call> {["x')], id="hermes-markers-inside-strings"),
    pytest.param(HERMES, TOOLS_ONLY, '<tool_call>\n{"name": "ping"}\n</tool_call>', "", "", [call("ping")],
                 id="hermes-no-arguments"),
    pytest.param(HERMES, TOOLS_ONLY, 'Hi <tool_call>\n{"name": get_weather}\n</tool_call> bye',
                 'Hi <tool_call>\n{"name": get_weather}\n</tool_call> bye', "", [], id="hermes-malformed-json"),
    pytest.param(HERMES, TOOLS_ONLY, '<tool_call>{"arguments": {"city": "Paris"}}</tool_call>',
                 '<tool_call>{"arguments": {"city": "Paris"}}</tool_call>', "", [], id="hermes-no-name"),
    pytest.param(HERMES, TOOLS_ONLY, '<tool_call>\n{"name": "get_weather", "arguments": {"ci',
                 '<tool_call>\n{"name": "get_weather", "arguments": {"ci', "", [], id="hermes-cut-off"),
    pytest.param(HERMES, TOOLS_ONLY, "<tool_call>get_weather(city='Paris')</tool_call>",
                 "<tool_call>get_weather(city='Paris')</tool_call>", "", [], id="hermes-not-json"),
    pytest.param(HERMES, TOOLS_ONLY, "if a < b and <tool> or <tool_ then {x}", "if a < b and <tool> or <tool_ then {x}",
                 "", [], id="hermes-lookalikes-are-content"),
    # Llama 3
    pytest.param(LLAMA3, TOOLS_ONLY, '{"name": "get_weather", "parameters": {"city": "Paris"}}', "", "", [PARIS],
                 id="llama3-bare"),
    pytest.param(LLAMA3, TOOLS_ONLY, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
                 "", "", [PARIS], id="llama3-python-tag"),
    pytest.param(LLAMA3, TOOLS_ONLY, f'  {WEATHER}; {TIME}', "", "", [PARIS, UTC], id="llama3-semicolons"),
    pytest.param(LLAMA3, TOOLS_ONLY, f'{WEATHER}\n{TIME}\nThat is all.', "That is all.", "", [PARIS, UTC],
                 id="llama3-newlines-then-content"),
    pytest.param(LLAMA3, TOOLS_ONLY, '{"answer": 42} is the JSON.', '{"answer": 42} is the JSON.', "", [],
                 id="llama3-json-that-is-no-call"),
    pytest.param(LLAMA3, TOOLS_ONLY, f"Calling: {WEATHER}", f"Calling: {WEATHER}", "", [],
                 id="llama3-json-after-text-is-content"),
    pytest.param(LLAMA3, TOOLS_ONLY, '{"name": "get_weather", "parameters": {"city": "Par',
                 '{"name": "get_weather", "parameters": {"city": "Par', "", [], id="llama3-cut-off"),
    # Mistral
    pytest.param(MISTRAL, TOOLS_ONLY, f"[TOOL_CALLS][{WEATHER}, {TIME}]", "", "", [PARIS, UTC], id="mistral-array"),
    pytest.param(MISTRAL, TOOLS_ONLY, f"Sure.\n[TOOL_CALLS] [{WEATHER}]", "Sure.", "", [PARIS],
                 id="mistral-content-before"),
    pytest.param(MISTRAL, TOOLS_ONLY,
                 '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'
                 '[TOOL_CALLS]get_time[CALL_ID]a1b2c3[ARGS]{"zone": "UTC"}',
                 "", "", [PARIS, UTC], id="mistral-name-args"),
    pytest.param(MISTRAL, TOOLS_ONLY, f"[{WEATHER}]", "", "", [PARIS], id="mistral-marker-not-rendered"),
    pytest.param(MISTRAL, TOOLS_ONLY, "[1] Paris is in France.", "[1] Paris is in France.", "", [],
                 id="mistral-bracket-content"),
    pytest.param(MISTRAL, TOOLS_ONLY, "[TOOL_CALLS]oops no call", "[TOOL_CALLS]oops no call", "", [],
                 id="mistral-marker-without-call"),
    pytest.param(MISTRAL, TOOLS_ONLY, f"[TOOL_CALLS][{WEATHER}, 7]", f"[TOOL_CALLS][{WEATHER}, 7]", "", [],
                 id="mistral-array-with-a-non-call"),
    # Plain JSON
    pytest.param(PLAIN_TOOLS, TOOLS_ONLY, WEATHER, "", "", [PARIS], id="json-object"),
    pytest.param(PLAIN_TOOLS, TOOLS_ONLY, f"\n[{WEATHER},\n {TIME}]\n", "", "", [PARIS, UTC], id="json-array"),
    pytest.param(PLAIN_TOOLS, TOOLS_ONLY,
                 '{"type": "function", "function": {"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\"}"}}',
                 "", "", [UTC], id="json-openai-shape"),
    pytest.param(PLAIN_TOOLS, TOOLS_ONLY, '{"name": "Ada", "age": 36}', '{"name": "Ada", "age": 36}', "", [],
                 id="json-answer-with-a-name-is-no-call"),
    pytest.param(PLAIN_TOOLS, TOOLS_ONLY, '{"name": "get_weather", "arguments": [1, 2]}',
                 '{"name": "get_weather", "arguments": [1, 2]}', "", [], id="json-arguments-not-an-object"),
    pytest.param(PLAIN_TOOLS, TOOLS_ONLY, "The weather is fine.", "The weather is fine.", "", [],
                 id="json-plain-answer"),
    # Thinking
    pytest.param(THINKING_HERMES, OPENED, "The user wants weather.\n</think>\n\nIt is sunny.",
                 "It is sunny.", "The user wants weather.", [], id="thinking-opened-by-prompt"),
    pytest.param(THINKING_HERMES, NOT_OPENED, "\n<think>\n\nHmm, weather.\n\n</think>\n\nIt is sunny.\n",
                 "It is sunny.\n", "Hmm, weather.", [], id="thinking-opened-by-output"),
    pytest.param(THINKING_HERMES, OPENED, "<think>\nHmm.</think>It is sunny.", "It is sunny.", "Hmm.", [],
                 id="thinking-marker-repeated-after-prompt"),
    pytest.param(THINKING_HERMES, NOT_OPENED, "  It is sunny.", "  It is sunny.", "", [], id="thinking-none"),
    pytest.param(THINKING_HERMES, NOT_OPENED, "Sunny <think>really</think> today.",
                 "Sunny <think>really</think> today.", "", [], id="thinking-only-at-the-start"),
    pytest.param(THINKING_HERMES, OPENED, "</think>\n\nSunny.", "Sunny.", "", [], id="thinking-empty"),
    pytest.param(THINKING_HERMES, OPENED, "Still thinking about <b> and </thi", "",
                 "Still thinking about <b> and </thi",
                 [], id="thinking-cut-off"),
    pytest.param(THINKING_HERMES, dict(OPENED, think=False), "Secret plan.\n</think>\n\nSunny.", "Sunny.", "", [],
                 id="think-false-drops-thinking"),
    pytest.param(THINKING_HERMES, dict(NOT_OPENED, think=False), "<think>Secret plan.</think>Sunny.", "Sunny.", "",
                 [], id="think-false-drops-unasked-thinking"),
    pytest.param(THINKING_HERMES, dict(OPENED, think="high"), "Deep.</think>Sunny.", "Sunny.", "Deep.", [],
                 id="think-level-keeps-thinking"),
    pytest.param(THINKING_HERMES, dict(prompt=CHATML_PROMPT + "<think>\n\n</think>\n\n", think=False, tools=False),
                 "Sunny.", "Sunny.", "", [], id="thinking-switched-off-by-template"),
    pytest.param(THINKING_TAG, NOT_OPENED, "<thinking>Let me see.</thinking>\nSunny.", "Sunny.", "Let me see.", [],
                 id="thinking-tag-family"),
    # Thinking and tools together
    pytest.param(THINKING_HERMES, dict(OPENED, tools=True),
                 f"Need the weather tool.\n</think>\n\n<tool_call>\n{WEATHER}\n</tool_call>",
                 "", "Need the weather tool.", [PARIS], id="thinking-then-call"),
    pytest.param(THINKING_HERMES, dict(OPENED, tools=True),
                 f"Maybe <tool_call>{WEATHER}</tool_call>? No.</think>It is sunny.",
                 "It is sunny.", f"Maybe <tool_call>{WEATHER}</tool_call>? No.", [],
                 id="call-inside-thinking-is-thinking"),
    pytest.param(THINKING_HERMES, dict(OPENED, think=False, tools=True),
                 f"Plan.</think>\n<tool_call>\n{TIME}\n</tool_call>", "", "", [UTC], id="think-false-call"),
]


def parse(parser: OutputParser, chunks: list[str], *, finish: bool = True) -> tuple[str, str, list[dict]]:
    """Feed ``chunks``, check every release is whole, and return (content, thinking, calls) in all."""
    outs = [parser.feed(chunk) for chunk in chunks]
    if finish:
        outs.append(parser.finish())
    for out in outs:
        assert isinstance(out, Parsed) and bool(out) == bool(out.content or out.thinking or out.tool_calls)
    calls = [c for out in outs for c in out.tool_calls]
    return "".join(o.content for o in outs), "".join(o.thinking for o in outs), calls


def splits(text: str) -> dict[str, list[str]]:
    """The same text as one chunk, one character per chunk, and random chunks of 1 to 9 characters."""
    ways = {"whole": [text], "chars": list(text)}
    for seed in range(5):
        rng, chunks, i = random.Random(seed), [], 0
        while i < len(text):
            n = rng.randint(1, 9)
            chunks.append(text[i:i + n])
            i += n
        ways[f"random-{seed}"] = chunks
    return ways


@pytest.mark.parametrize("template, request_, output, content, thinking, calls", CASES)
def test_output_is_split_the_same_however_it_is_chunked(template, request_, output, content, thinking, calls):
    for way, chunks in splits(output).items():
        parser = make_parser(template, **request_)
        assert parse(parser, chunks) == (content, thinking, calls), way


@pytest.mark.parametrize("template, request_, output, content, thinking, calls", CASES)
def test_whole_calls_are_released_before_the_end(template, request_, output, content, thinking, calls):
    """Each call comes out as soon as its JSON closes; what is released early is never taken back."""
    early_content, early_thinking, early_calls = parse(make_parser(template, **request_), list(output), finish=False)
    assert early_calls == calls
    assert content.startswith(early_content) and thinking.startswith(early_thinking)


HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "thinking": "Use the tool.", "tool_calls": [PARIS]},
    {"role": "tool", "content": "sunny"},
]


@pytest.mark.parametrize("template", [HERMES, THINKING_HERMES, LLAMA3, LLAMA3_PYTHON_TAG, MISTRAL, PLAIN_TOOLS,
                                      THINKING_TAG, MAGISTRAL])
def test_the_family_templates_render_tools_and_a_call_history(template):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    prompt = ChatTemplate(template, bos_token="<s>", eos_token="</s>").render(HISTORY, tools=tools)
    assert "Weather in Paris?" in prompt and "sunny" in prompt


@pytest.mark.parametrize(
    "enable_thinking, output, expected",
    [
        pytest.param(True, "Plan.\n</think>\n\nHello!", ("Hello!", "Plan.", []), id="on"),
        pytest.param(False, "Hello!", ("Hello!", "", []), id="off"),
    ],
)
def test_the_rendered_prompt_tells_whether_the_output_starts_inside_thinking(enable_thinking, output, expected):
    prompt = ChatTemplate(THINKING_HERMES).render(HISTORY[:1], enable_thinking=enable_thinking)
    assert prompt.endswith("<think>\n") == enable_thinking
    assert parse(make_parser(THINKING_HERMES, prompt=prompt, think=True, tools=False), [output]) == expected


def test_nothing_to_parse_gives_no_parser():
    assert make_parser(HERMES, prompt=CHATML_PROMPT, think=None, tools=False) is None


def test_a_marker_split_across_feeds_never_leaks():
    parser = make_parser(THINKING_HERMES, prompt=CHATML_PROMPT, think=True, tools=True)
    outs = [parser.feed(piece) for piece in ["<thi", "nk>", "plan", "</th", "ink>", "Hi <tool", "_call>", WEATHER,
                                              "</tool_", "call>"]]
    outs.append(parser.finish())
    assert [o.content for o in outs if o.content] == ["Hi"]
    assert [o.thinking for o in outs if o.thinking] == ["plan"]
    assert [o.tool_calls for o in outs if o.tool_calls] == [(PARIS,)]
    assert not outs[0] and not outs[1]  # "<thi" + "nk>" released nothing


def test_answer_text_streams_without_waiting_for_the_end():
    parser = make_parser(HERMES, prompt=CHATML_PROMPT, think=None, tools=True)
    assert parser.feed("The weather ").content == "The weather"
    assert parser.feed("is fine").content == " is fine"


def test_parsing_cost_stays_linear_in_the_output():
    """A long call and long thinking fed a character at a time: no re-parse of everything held."""
    n = 60_000
    output = "x" * n + "</think>" + '<tool_call>{"name": "w", "arguments": {"t": "' + "y" * n + '"}}</tool_call>'
    parser = make_parser(THINKING_HERMES, prompt=CHATML_PROMPT + "<think>", think=True, tools=True)
    start = time.perf_counter()
    content, thinking, calls = parse(parser, list(output))
    elapsed = time.perf_counter() - start
    assert thinking == "x" * n and calls == [call("w", t="y" * n)] and content == ""
    assert elapsed < 10, f"{2 * n} characters took {elapsed:.1f}s"


# --- the grammar that forces a call ---------------------------------------------------------------

def tool(name: str, parameters: dict | None = None) -> dict:
    function = {"name": name, "description": f"the {name} tool"}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


WEATHER_TOOL = tool("get_weather", {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "days": {"type": "integer"},
        "unit": {"enum": ["C", "F"]},
    },
    "required": ["city", "days"],
})
TIME_TOOL = tool("get_time", {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET"]}, "exact": {"type": "boolean"}},
    "required": ["zone"],
})
TOOLS = [WEATHER_TOOL, TIME_TOOL]
TEMPLATES = {ToolFormat.HERMES: HERMES, ToolFormat.LLAMA3: LLAMA3, ToolFormat.MISTRAL: MISTRAL,
             ToolFormat.JSON: PLAIN_TOOLS}


def compiles(model: Model, gbnf: str) -> bool:
    chain = SamplerChain()
    try:
        chain.add_grammar(model, gbnf)
        return True
    finally:
        chain.close()


def generate(model: Model, gbnf: str, *, seed: int, max_tokens: int = 300) -> tuple[str, bool]:
    """Sample from the tiny model under ``gbnf``; returns (text, ended by the model)."""
    ctx = Context(model, n_ctx=512, n_seq_max=1, n_batch=512, n_threads=1)
    sampler = build_sampler(model, SamplingParams(temperature=0.8, seed=seed), grammar=gbnf, n_ctx=512)
    try:
        batch, prompt = Batch(512), model.tokenize("What is the weather in Paris?", add_special=True)
        row, pos, out = batch.add(prompt, 0, 0), len(prompt), b""
        ctx.decode(batch)
        for _ in range(max_tokens):
            token = sampler.sample(ctx, row)
            if model.is_eog(token):
                return out.decode(), True
            out += model.piece(token)
            batch.clear()
            row = batch.add(np.array([token], dtype=np.int32), pos, 0)
            pos += 1
            ctx.decode(batch)
        return out.decode(), False
    finally:
        sampler.close()
        ctx.close()


def assert_valid_call(found: dict, allowed: set[str]) -> None:
    name, args = found["function"]["name"], found["function"]["arguments"]
    assert name in allowed
    if name == "get_weather":
        assert args["city"] in ("Paris", "Oslo", "Lima") and isinstance(args["days"], int)
        assert set(args) <= {"city", "days", "unit"}
    else:
        assert args["zone"] in ("UTC", "CET") and set(args) <= {"zone", "exact"}


@pytest.mark.parametrize("fmt", list(ToolFormat), ids=lambda f: f.value)
@pytest.mark.parametrize(
    "choice",
    [
        pytest.param(dict(), id="required"),
        pytest.param(dict(name="get_time"), id="named"),
        pytest.param(dict(parallel=True), id="parallel"),
    ],
)
def test_forced_call_grammar_compiles_and_what_it_forces_is_parsed(model, fmt, choice):
    gbnf = tool_call_grammar(fmt, TOOLS, **choice)
    assert compiles(model, gbnf)
    allowed = {choice["name"]} if "name" in choice else {"get_weather", "get_time"}
    for seed in (1, 2):
        text, ended = generate(model, gbnf, seed=seed)
        content, _thinking, calls = parse(make_parser(TEMPLATES[fmt], **TOOLS_ONLY), list(text))
        assert calls, text
        for found in calls:
            assert_valid_call(found, allowed)
        if ended:
            assert content.strip() == "" and (choice.get("parallel") or len(calls) == 1), text


@pytest.mark.parametrize(
    "fmt, text",
    [
        pytest.param(ToolFormat.HERMES, '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
                     '\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>', id="hermes"),
        pytest.param(ToolFormat.LLAMA3, '{"name": "get_time", "parameters": {"zone": "CET"}}; '
                     '{"name": "get_time", "parameters": {"zone": "CET"}}', id="llama3"),
        pytest.param(ToolFormat.MISTRAL, '[TOOL_CALLS][{"name": "get_time", "arguments": {"zone": "CET"}}, '
                     '{"name": "get_time", "arguments": {"zone": "CET"}}]', id="mistral"),
        pytest.param(ToolFormat.JSON, '[{"name": "get_time", "arguments": {"zone": "CET"}}, '
                     '{"name": "get_time", "arguments": {"zone": "CET"}}]', id="json"),
    ],
)
def test_parallel_calls_in_the_grammars_shape_are_parsed(fmt, text):
    parsed = parse(make_parser(TEMPLATES[fmt], **TOOLS_ONLY), list(text))
    assert parsed == ("", "", [call("get_time", zone="CET")] * 2)


def test_tools_without_parameters_and_with_clashing_definitions_compile(model):
    def with_defs(name: str, enum: list[str]) -> dict:
        return tool(name, {"type": "object", "properties": {"unit": {"$ref": "#/$defs/Unit"}},
                           "required": ["unit"], "$defs": {"Unit": {"enum": enum}}})

    tools = [tool("ping"), tool("noop", {}), with_defs("a", ["C", "F"]), with_defs("b", ["m", "ft"])]
    gbnf = tool_call_grammar(ToolFormat.HERMES, tools)
    assert compiles(model, gbnf)
    assert '"\\"ft\\""' in gbnf and '"\\"F\\""' in gbnf  # each tool keeps its own definition


@pytest.mark.parametrize(
    "tools, name, message",
    [
        pytest.param([tool("bad", {"type": "object", "properties": {"x": {"type": "frobnicate"}}})], None,
                     'tool "bad"', id="unknown-type"),
        pytest.param([tool("remote", {"type": "object", "properties": {"x": {"$ref": "https://example.com/s.json"}}})],
                     None, 'tool "remote"', id="remote-ref"),
        pytest.param([tool("str", {"type": "string"})], None, 'tool "str"', id="not-an-object"),
        pytest.param([{"type": "function", "function": {"description": "nameless"}}], None, '"name"', id="no-name"),
        pytest.param(TOOLS, "get_news", '"get_news"', id="unknown-name"),
        pytest.param([], None, "at least one tool", id="no-tools"),
    ],
)
def test_bad_tools_are_a_bad_request_naming_the_culprit(tools, name, message):
    with pytest.raises(BadRequest) as info:
        tool_call_grammar(ToolFormat.HERMES, tools, name=name)
    assert message in str(info.value)


def test_llama3_grammar_writes_parameters_and_hermes_writes_arguments():
    assert '"\\"parameters\\""' in tool_call_grammar(ToolFormat.LLAMA3, TOOLS)
    assert '"\\"arguments\\""' in tool_call_grammar(ToolFormat.HERMES, TOOLS)
