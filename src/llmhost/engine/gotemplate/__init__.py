"""Go ``text/template`` for Ollama's chat templates: lexer → parser → tree → bounded executor.

No maintained Python implementation fits (PyPI has one CGo wrapper at 0.0.2, with no bounds and no
way to give it Ollama's typed values), so this is a small interpreter of Go's grammar and semantics:

    lexer.py    source → tokens (trim markers, comments, literals)
    parser.py   tokens → tree (``nodes.py``), with Go's parse-time checks
    exec.py     tree + data → text, within a ``RenderBudget`` (steps, time, size)
    values.py   Go's printing, truth and encoding/json for Python data
    funcs.py    Go's predefined functions and Ollama's (``json``, ``currentDate``, …)
    ollama.py   Ollama's rules: ``.Messages`` or per-turn ``.System/.Prompt/.Response``, the data
                typed as Ollama's, and what Ollama reads from a template (tool-call tag, thinking tags)

Errors are ``GoTemplateError`` (400s) naming the template and the line:column.
"""

from typing import Any

from llmhost.engine.gotemplate.errors import GoTemplateError, GoTemplateExecError, GoTemplateSyntaxError
from llmhost.engine.gotemplate.exec import Executor
from llmhost.engine.gotemplate.funcs import FUNCTION_NAMES
from llmhost.engine.gotemplate.ollama import OllamaTemplate, Values, parsed, thinking_tags, tool_call_tag
from llmhost.engine.gotemplate.parser import parse
from llmhost.engine.sandbox import RenderBudget, RenderLimits


def render(source: str, data: Any, budget: RenderBudget | None = None, name: str = "template") -> str:
    """Plain Go: ``source`` executed with ``data`` as dot (no Ollama rules), within ``budget``."""
    tree = parse(source, name, FUNCTION_NAMES)
    return Executor(tree, name, source, budget or RenderLimits().budget()).run(tree.root, data)

__all__ = [
    "GoTemplateError",
    "GoTemplateExecError",
    "GoTemplateSyntaxError",
    "OllamaTemplate",
    "Values",
    "parsed",
    "render",
    "thinking_tags",
    "tool_call_tag",
]
