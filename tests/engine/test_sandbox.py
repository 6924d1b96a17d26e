"""Chat template renders are bounded in time, steps and size, and real templates render as before."""

from __future__ import annotations

import json
import threading
import time

import pytest
from gguf import GGUFReader
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmhost.engine.sandbox import RenderLimits
from llmhost.engine.templates import ChatTemplate
from llmhost.errors import RenderLimitError

HI = [{"role": "user", "content": "Hi"}]
# Small limits keep each bomb cheap: it is refused after a few milliseconds of work.
SMALL = RenderLimits(seconds=5, steps=20_000, chars=10_000)


def render(source: str, limits: RenderLimits = SMALL, messages=HI, cancel: threading.Event | None = None) -> str:
    return ChatTemplate(source).render(messages, budget=limits.budget({"messages": messages}, cancel))


@pytest.mark.parametrize(
    "source, limit",
    [
        pytest.param("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                     "steps", id="nested-range-loops"),
        pytest.param("{% set l = range(3000)|list %}{% for i in l %}{% for j in l %}{% endfor %}{% endfor %}",
                     "steps", id="nested-list-loops"),
        pytest.param("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(30) }}",
                     "steps", id="doubling-macro"),
        pytest.param("{{ range(10**6)|list|length }}", "range", id="big-range"),
        pytest.param("{{ 'x' * 10**8 }}", "characters", id="string-repetition"),
        pytest.param("{{ (['x' * 1000] * 100000)|length }}", "characters", id="list-repetition"),
        pytest.param("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
                     "characters", id="doubling-concatenation"),
        pytest.param("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
                     "characters", id="doubling-addition"),
        pytest.param("{% set ns = namespace(l=['xxxx']) %}{% for i in range(40) %}{% set ns.l = [ns.l, ns.l] %}"
                     "{% endfor %}{{ ns.l }}", "characters", id="nested-list-printed"),
        pytest.param("{% set ns = namespace(l=['xxxx']) %}{% for i in range(40) %}{% set ns.l = [ns.l, ns.l] %}"
                     "{% endfor %}{{ ns.l|tojson }}", "characters", id="nested-list-as-json"),
        pytest.param("{{ 'x'|center(10**9) }}", "characters", id="center-filter"),
        pytest.param("{{ 'x'.ljust(10**9) }}", "characters", id="ljust-method"),
        pytest.param("{{ range(10000)|join('y' * 5000) }}", "characters", id="join-separator"),
        pytest.param("{{ ('y' * 5000).join(range(10000)|map('string')) }}", "characters", id="join-method"),
        pytest.param("{% set s = 'y' * 5000 %}{{ s|replace('', s) }}", "characters", id="replace"),
        pytest.param("{% set s = '\n' * 5000 %}{{ s|indent(5000) }}", "characters", id="indent"),
        pytest.param("{{ '%1000000000d' % 1 }}", "characters", id="percent-width"),
        pytest.param("{{ '%*d' % (10**9, 1) }}", "characters", id="percent-star"),
        pytest.param("{{ '{:>1000000000}'.format(1) }}", "characters", id="format-width"),
        pytest.param("{{ ('\t' * 5000).expandtabs(5000) }}", "characters", id="expandtabs"),
        pytest.param("{{ ('x' * 5000).translate({120: 'y' * 5000}) }}", "characters", id="translate"),
        pytest.param("{{ (range(5000)|list)|tojson(indent=5000) }}", "characters", id="tojson-indent"),
        pytest.param("{{ {}.fromkeys(range(10000), 'y' * 5000) }}", "characters", id="dict-printed"),
        pytest.param("{{ [1]|batch(10**9, 0)|list }}", "characters", id="batch-fill"),
        pytest.param("{{ range(10000)|map('center', 5000)|list|length }}", "built in all", id="many-values"),
        pytest.param("{% for i in range(10000) %}{{ 'y' * 5000 }}{% endfor %}", "characters", id="long-output"),
        pytest.param("{% set x %}{% for i in range(10000) %}{{ 'y' * 5000 }}{% endfor %}{% endset %}",
                     "built in all", id="captured-output"),
        pytest.param("{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
                     "bits", id="integer-squaring"),
        pytest.param("{{ 2 ** 1000000000 }}", "bits", id="integer-power"),
        pytest.param("{{ ([[1]] * 1000)|sum(start=[]) }}", "sum", id="sum-of-lists"),
    ],
)
def test_template_bombs_are_refused_naming_the_limit(source, limit):
    start = time.monotonic()
    with pytest.raises(RenderLimitError, match=limit):
        render(source)
    assert time.monotonic() - start < 3


def test_a_render_past_its_deadline_stops_itself():
    forever = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    start = time.monotonic()
    with pytest.raises(RenderLimitError, match="time limit of 0.2 s"):
        render(forever, RenderLimits(seconds=0.2, steps=10**12))
    assert time.monotonic() - start < 1.5


def test_cancelling_stops_a_render_under_way():
    cancel, failures = threading.Event(), []
    forever = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"

    def run():
        try:
            render(forever, RenderLimits(seconds=600, steps=10**12), cancel=cancel)
        except RenderLimitError as e:
            failures.append(str(e))

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.1)
    cancel.set()
    thread.join(timeout=2)
    assert not thread.is_alive() and "cancelled" in failures[0]


def test_lipsum_is_not_available():
    with pytest.raises(Exception, match="lipsum"):
        render("{{ lipsum(10**6) }}")


def test_limits_grow_with_the_text_given():
    # A long conversation renders to a long prompt (cut to the context later), whatever the floor.
    long = [{"role": "user", "content": "x" * 50_000}]
    text = render("{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}", messages=long)
    assert len(text) == 50_007


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("{{ messages[0]['content'] * 3 }}{{ '-' * 10 }}", id="repetition"),
        pytest.param("{{ '%s: %5d' % ('n', 42) }}{{ '{0}-{1:>4}'.format('a', 7) }}", id="formatting"),
        pytest.param("{{ [1, 2, 3]|join(', ') }}{{ ', '.join(['a', 'b']) }}{{ 'a b'|replace(' ', '_') }}", id="join"),
        pytest.param("{{ 'a\nb'|indent(2, first=True) }}{{ 'x'|center(9) }}{{ [1, 2, 3]|sum }}", id="filters"),
        pytest.param("{% for m in messages recursive %}{{ m.role }}{% endfor %}{{ range(3)|list }}", id="loops"),
        pytest.param("{{ {'a': [1, {'b': 'c'}]} }}{{ (1, 'x') ~ none }}{{ 2 ** 10 }}", id="containers-printed"),
        pytest.param("{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}"
                     "{{ ns.n }}{{ ns }}", id="namespace"),
    ],
)
def test_ordinary_templates_render_as_jinja_does(source):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    expected = ImmutableSandboxedEnvironment().from_string(source).render(messages=messages)
    assert render(source, messages=messages) == expected


@pytest.mark.parametrize("options", [{}, {"indent": 2}, {"separators": (",", ":")}], ids=["plain", "indent", "compact"])
def test_tojson_is_json_dumps_keeping_unicode(options):
    messages = [{"role": "user", "content": "Hï"}]
    arguments = ", ".join(f"{k}={v!r}" for k, v in options.items())
    assert render(f"{{{{ messages|tojson({arguments}) }}}}", messages=messages) == json.dumps(
        messages, ensure_ascii=False, **options)


def test_smollm2_template_renders_a_long_conversation_as_jinja_does(smollm2_path):
    source = GGUFReader(smollm2_path).fields["tokenizer.chat_template"].contents()
    messages = [{"role": ("user", "assistant")[i % 2], "content": f"message {i} " * 50} for i in range(2000)]
    variables = dict(messages=messages, add_generation_prompt=True, bos_token="<|im_start|>", eos_token="<|im_end|>")
    expected = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source).render(
        **variables)
    template = ChatTemplate(source, bos_token="<|im_start|>", eos_token="<|im_end|>")
    assert template.render(messages) == expected  # default limits, ~1.3 MB of prompt
