"""Chat templates: render ``messages`` to a prompt with the model's Jinja template, or an Ollama Go
template (``GoChatTemplate``, ``engine.gotemplate``): ``compile_template`` tells them apart.

Templates come from GGUF files and Modelfiles, i.e. from strangers, so they run in Jinja's
``ImmutableSandboxedEnvironment``. The variables and helpers follow Hugging Face's
``apply_chat_template`` conventions (``messages``, ``add_generation_prompt``, ``bos_token``,
``eos_token``, ``raise_exception``, ``tojson``, ``strftime_now``), which is what GGUF templates are
written against. Any failure — a syntax error at compile time, ``raise_exception`` or a runtime error
while rendering — becomes a ``BadRequest`` with the template's own message. Renders are bounded in
time, steps and size (``engine.sandbox``): going over a limit is a ``RenderLimitError``, also a 400.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import Extension

from llmhost.api.types import validate_messages as validate_messages  # re-exported: the runner's checks
from llmhost.engine.gotemplate import GoTemplateError, OllamaTemplate, Values
from llmhost.engine.sandbox import BoundedEnvironment, RenderBudget, RenderLimits, joined, render
from llmhost.errors import RenderLimitError, TemplateError

# A template's size limit (a Modelfile's TEMPLATE, a request's "template"): compiling Jinja costs
# ~10 ms per KiB of dense code, part of it in one call that holds the GIL; real chat templates are
# a few KiB (gpt-oss's, 16).
MAX_TEMPLATE_CHARS = 64 << 10

# Used when a GGUF has no template: ChatML is what most small instruct models were tuned on.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Go text/template actions, as in Ollama's registry models (``{{ .Prompt }}``, ``{{- range .Messages }}``,
# ``{{ if .System }}``, ``{{ end }}``, ``{{ $.Tools }}``): none of them parses as Jinja.
_GO_ACTION = re.compile(
    r"\{\{-?\s*(?:\.[A-Za-z_]|\$|(?:if|with|else\s+if)\s|range\s+[^(\s]|(?:end|else)\s*-?\}\}"
    r'|(?:template|define|block)\s+")'
    r"|\{\{[^}]*?[\s(|]\.[A-Za-z_]"  # a field as an argument: {{ index .Messages 0 }}, {{ json .Tools }}
)


def is_go_template(source: str) -> bool:
    """Whether ``source`` is a Go template (Ollama's format) rather than a Jinja one."""
    return _GO_ACTION.search(source) is not None


class GoChatTemplate:
    """An Ollama Go template behind the same interface as ``ChatTemplate`` (see ``engine.gotemplate``).

    ``render`` takes what Jinja templates are given (``tools``, ``enable_thinking``,
    ``reasoning_effort``) and hands it to the template as Ollama does (``.Tools``, ``.Think``,
    ``.ThinkLevel``, ``.IsThinkSet``); ``render_values`` takes Ollama's values directly (a prompt and
    suffix for fill-in-the-middle). Its errors are TemplateErrors naming the line:column.
    """

    def __init__(self, source: str, name: str = '"template"'):
        self.source = source
        try:
            self.go = OllamaTemplate(source, name)
        except GoTemplateError as e:
            raise TemplateError(str(e)) from None

    def render(self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True,
               budget: RenderBudget | None = None, **extra: Any) -> str:
        think = extra.get("reasoning_effort") or extra.get("enable_thinking")
        if "enable_thinking" in extra and not think:
            think = False
        return self.render_values(Values(messages=list(messages), tools=extra.get("tools") or (), think=think),
                                  budget)

    def render_values(self, values: Values, budget: RenderBudget | None = None) -> str:
        if budget is None:
            budget = RenderLimits().budget({"messages": list(values.messages), "tools": list(values.tools)})
        try:
            return self.go.execute(values, budget)
        except RenderLimitError:
            raise
        except GoTemplateError as e:
            raise TemplateError(str(e)) from None

    @property
    def takes_suffix(self) -> bool:
        """Whether it renders fill-in-the-middle prompts itself (it reads ``.Suffix``)."""
        return "suffix" in self.go.vars


def compile_template(source: str, *, bos_token: str = "", eos_token: str = "",
                     name: str = '"template"') -> ChatTemplate | GoChatTemplate:
    """A Go template (Ollama's format) or a Jinja one (the GGUF's format), whichever ``source`` is."""
    if is_go_template(source):
        return GoChatTemplate(source, name)
    return ChatTemplate(source, bos_token=bos_token, eos_token=eos_token)


def check_template(source: str, name: str = "TEMPLATE") -> None:
    """Refuse (TemplateError, 400) a template to be stored that is too long or does not compile,
    so a model is never created with a template every request would fail on."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"{name} is {len(source)} characters, more than the limit of {MAX_TEMPLATE_CHARS}")
    compile_template(source, name=name)


class _GenerationTag(Extension):
    """``{% generation %}…{% endgeneration %}`` (HF's assistant-mask marker): render the body as is."""

    tags = {"generation"}  # noqa: RUF012  (jinja2.ext.Extension declares it an instance attribute)

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, indent: int | None = None, separators=None, sort_keys: bool = False, ensure_ascii=False):
    # HF's tojson keeps non-ASCII text readable (Jinja's built-in escapes it for HTML).
    encoder = json.JSONEncoder(indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    if indent is None and all(len(s) <= 4 for s in separators or ()):
        return encoder.encode(value)  # at most a few times the value's size, which the sandbox checked
    return joined(encoder.iterencode(value))  # indents and separators repeat per item: measured as it goes


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> BoundedEnvironment:
    # trim_blocks/lstrip_blocks: HF renders templates with these, and templates rely on them.
    return BoundedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols", _GenerationTag],
        filters={"tojson": _tojson},
        globals={"raise_exception": _raise_exception, "strftime_now": _strftime_now},
    )


class ChatTemplate:
    """A compiled chat template plus the special-token texts it may reference."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = ""):
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"invalid chat template (line {e.lineno}): {e.message}") from None

    def render(self, messages: Sequence[dict[str, Any]], *, add_generation_prompt: bool = True,
               budget: RenderBudget | None = None, **extra: Any) -> str:
        """The prompt text for ``messages``; ``extra`` adds template variables (e.g. ``tools``).

        ``budget``: what the render may spend (default: the default limits for these variables);
        a request's renders share one.
        """
        variables = dict(messages=list(messages), add_generation_prompt=add_generation_prompt,
                         bos_token=self.bos_token, eos_token=self.eos_token, **extra)
        if budget is None:
            budget = RenderLimits().budget({"messages": variables["messages"], **extra})
        try:
            return render(self._template, variables, budget)
        except RenderLimitError:
            raise
        except jinja2.exceptions.TemplateError as e:
            raise TemplateError(f"chat template error: {e.message or e}") from None
        except Exception as e:  # a template can raise anything (TypeError on bad message shapes, …)
            raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
