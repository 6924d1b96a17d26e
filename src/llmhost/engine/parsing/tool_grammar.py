"""A GBNF grammar that forces the output to be a tool call (``tool_choice`` "required" or named).

Each offered tool becomes a JSON schema ``{"name": <const>, "arguments": <its parameters>}``
(``"parameters"`` for Llama 3), all of them one ``anyOf``; llama-cpp-python's converter turns that
into rules, and the format's own wrapper goes around it, so the forced text is exactly what
``tool_calls.ToolCallParser`` parses for that format. Each tool's ``$defs`` are lifted to the top
under a per-tool prefix and its ``$ref``s rewritten to match, so tools with references of the same
name cannot clash.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llmhost.engine.llamacpp import json_schema_to_gbnf
from llmhost.engine.parsing.tool_calls import ToolFormat
from llmhost.engine.sampling import check_schema
from llmhost.errors import BadRequest

_CALL_RULE = "tool-call"

# How calls are written around the call rule: (one call, several calls).
_WRAPPERS = {
    ToolFormat.HERMES: (
        f'"<tool_call>\\n" {_CALL_RULE} "\\n</tool_call>"',
        f'"<tool_call>\\n" {_CALL_RULE} "\\n</tool_call>" ("\\n<tool_call>\\n" {_CALL_RULE} "\\n</tool_call>")*',
    ),
    ToolFormat.LLAMA3: (_CALL_RULE, f'{_CALL_RULE} (";" " "? {_CALL_RULE})*'),
    ToolFormat.MISTRAL: (
        f'"[TOOL_CALLS][" {_CALL_RULE} "]"',
        f'"[TOOL_CALLS][" {_CALL_RULE} ("," " "? {_CALL_RULE})* "]"',
    ),
    ToolFormat.JSON: (_CALL_RULE, f'"[" {_CALL_RULE} ("," " "? {_CALL_RULE})* "]"'),
}


def tool_call_grammar(fmt: ToolFormat, tools: list[dict[str, Any]], *, name: str | None = None,
                      parallel: bool = False) -> str:
    """GBNF (root rule ``root``) for exactly one call in ``fmt`` (one or more with ``parallel``) of
    one of ``tools`` (or of the one called ``name``), its arguments matching the tool's parameters.

    ``tools`` are Ollama/OpenAI-shaped ``{"type": "function", "function": {"name", "parameters"}}``;
    a bad tool, an invalid schema or an unknown ``name`` is a BadRequest naming it.
    """
    check_schema(tools, "the tools")
    functions = [_function(tool) for tool in tools]
    if name is not None:
        functions = [f for f in functions if f[0] == name]
        if not functions:
            raise BadRequest(f'tool_choice names the function "{name}", which is not among the tools')
    if not functions:
        raise BadRequest("a forced tool call needs at least one tool")
    key = "parameters" if fmt is ToolFormat.LLAMA3 else "arguments"
    schema = _calls_schema(functions, key)
    try:
        rules = json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # the converter raises ValueError, KeyError, AssertionError, …
        raise BadRequest(f"invalid JSON schema in the tools: {e}") from None
    rules = re.sub(r"^root ::=", f"{_CALL_RULE} ::=", rules, count=1, flags=re.M)
    return f"root ::= {_WRAPPERS[fmt][parallel]}\n{rules}\n"


def _function(tool: Any) -> tuple[str, dict[str, Any]]:
    """(name, parameters schema) of one tool, checked on its own so an error can name it."""
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(function, dict) or not isinstance(name, str) or not name:
        raise BadRequest('each tool needs a "function" with a "name"')
    params = function.get("parameters") or {"type": "object"}
    if not isinstance(params, dict) or params.get("type", "object") != "object":
        raise BadRequest(f'the parameters of tool "{name}" must be a JSON schema of type object')
    try:
        json_schema_to_gbnf(json.dumps(params))
    except Exception as e:
        raise BadRequest(f'invalid JSON schema in the parameters of tool "{name}": {e}') from None
    return name, params


def _calls_schema(functions: list[tuple[str, dict[str, Any]]], key: str) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    calls = []
    for i, (name, params) in enumerate(functions):
        args_ref = _lift_defs(params, f"tool{i}-", defs)
        calls.append({
            "type": "object",
            "properties": {"name": {"const": name}, key: {"$ref": args_ref}},
            "required": ["name", key],
            "additionalProperties": False,
        })
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {**schema, "$defs": defs}


def _lift_defs(params: dict[str, Any], prefix: str, defs: dict[str, Any]) -> str:
    """Move ``params`` and its own definitions into ``defs`` under ``prefix``; returns its $ref."""
    own = {**_mapping(params.get("definitions")), **_mapping(params.get("$defs"))}
    body = {k: v for k, v in params.items() if k not in ("$defs", "definitions")}
    defs[prefix + "args"] = _rebase(body, prefix)
    for def_name, definition in own.items():
        defs[f"{prefix}def-{def_name}"] = _rebase(definition, prefix)
    return f"#/$defs/{prefix}args"


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _rebase(node: Any, prefix: str) -> Any:
    """A copy of a schema node whose local ``$ref``s point at the lifted definitions."""
    if isinstance(node, list):
        return [_rebase(item, prefix) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _rebase(v, prefix) for k, v in node.items()}
    ref = out.get("$ref")
    if isinstance(ref, str):
        out["$ref"] = _rebased_ref(ref, prefix)
    return out


def _rebased_ref(ref: str, prefix: str) -> str:
    if not ref.startswith("#"):
        return ref  # remote: the converter refuses it, and the error names the tool
    path = ref[1:].strip("/").split("/") if ref.strip("#/") else []
    if len(path) >= 2 and path[0] in ("$defs", "definitions"):
        return "/".join(["#", "$defs", f"{prefix}def-{path[1]}", *path[2:]])
    return "/".join(["#", "$defs", prefix + "args", *path])
