"""Wire types for tool calling and thinking, shared by the native and the OpenAI routes.

``tools`` follow Ollama's (and OpenAI's) shape: ``[{"type": "function", "function": {"name",
"description", "parameters": {JSON schema}}}]``. A tool call is ``{"function": {"name", "arguments":
{...}}}`` with the arguments an object on the native API (the OpenAI routes carry them as a JSON
string and convert at their edge). Validation happens here, before anything is started, so a bad
tool or call is a 400 that names the offending index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from llmhost.errors import BadRequest

THINK_LEVELS = ("low", "medium", "high", "max")
MAX_TOOLS = 512  # far beyond any real agent; bounds the template and grammar work a body can ask for


def tools_field(value: Any) -> tuple[dict[str, Any], ...]:
    """``tools``: a list of function tools (null or absent: none)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRequest('invalid value for "tools": expected an array of tools')
    if len(value) > MAX_TOOLS:
        raise BadRequest(f'too many tools: {len(value)} (at most {MAX_TOOLS})')
    return tuple(_tool(tool, i) for i, tool in enumerate(value))


def _tool(tool: Any, index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    if not isinstance(tool, dict):
        raise BadRequest(f"invalid tool at {where}: expected an object")
    kind = tool.get("type") or "function"
    if kind != "function":
        raise BadRequest(f'invalid tool at {where}: type must be "function", not {kind!r}')
    function = tool.get("function")
    if not isinstance(function, dict):
        raise BadRequest(f'invalid tool at {where}: "function" must be an object')
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f'invalid tool at {where}: "function.name" must be a non-empty string')
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequest(f'invalid tool at {where}: "function.parameters" must be a JSON schema object')
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise BadRequest(f'invalid tool at {where}: "function.description" must be a string')
    return {**tool, "type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    """One call the model made (or an assistant message in a history made)."""

    name: str
    arguments: dict[str, Any]
    id: str = ""
    index: int = 0

    @classmethod
    def from_json(cls, value: Any, where: str) -> ToolCall:
        if not isinstance(value, dict) or not isinstance(value.get("function"), dict):
            raise BadRequest(f'invalid tool call at {where}: expected an object with a "function" object')
        function = value["function"]
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f'invalid tool call at {where}: "function.name" must be a non-empty string')
        call_id = value.get("id") or ""
        if not isinstance(call_id, str):
            raise BadRequest(f'invalid tool call at {where}: "id" must be a string')
        index = function.get("index", 0)
        if isinstance(index, bool) or not isinstance(index, int):
            index = 0
        return cls(name, arguments_object(function.get("arguments"), where), call_id, index)

    def to_json(self) -> dict[str, Any]:
        """Ollama's native shape."""
        out: dict[str, Any] = {"function": {"index": self.index, "name": self.name, "arguments": self.arguments}}
        if self.id:
            out = {"id": self.id, **out}
        return out

    def for_template(self) -> dict[str, Any]:
        """What chat templates read: HF's ``{"type", "function": {"name", "arguments"}}`` plus the id."""
        call: dict[str, Any] = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        if self.id:
            call["id"] = self.id
        return call


def arguments_object(value: Any, where: str) -> dict[str, Any]:
    """Tool-call arguments as an object; a JSON string holding an object is accepted (OpenAI's form)."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRequest(f"invalid tool call arguments at {where}: not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRequest(f"invalid tool call arguments at {where}: expected a JSON object")
    return value


def think_field(value: Any) -> bool | str | None:
    """``think``: a boolean or a level; None when absent (the model's default applies). Texts as Ollama's."""
    if value is None or isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise BadRequest('think must be a boolean or string ("high", "medium", "low", "max", true, or false)')
    if value in ("true", "false"):
        return value == "true"
    if value not in THINK_LEVELS:
        raise BadRequest(f'invalid think value: {json.dumps(value)} (must be "high", "medium", "low", "max", '
                         "true, or false)")
    return value


@dataclass(frozen=True)
class ToolChoice:
    """Which tool use a request allows: ``auto`` (the model's choice), ``none``, ``required`` or one name.

    Beyond Ollama, which ignores ``tool_choice``: ``required`` and a named function are enforced with
    a grammar on the model's output.
    """

    mode: str = "auto"
    name: str | None = None

    @classmethod
    def from_json(cls, value: Any, tools: tuple[dict[str, Any], ...]) -> ToolChoice:
        if value is None or value == "auto":
            return cls()
        if value in ("none", "required"):
            choice = cls(value)
        elif isinstance(value, dict) and isinstance(value.get("function"), dict):
            choice = cls("function", value["function"].get("name"))
        elif isinstance(value, dict) and isinstance(value.get("name"), str):
            choice = cls("function", value["name"])
        else:
            raise BadRequest('invalid value for "tool_choice": expected "auto", "none", "required" '
                             'or {"type": "function", "function": {"name": ...}}')
        if choice.mode != "none" and not tools:
            raise BadRequest(f'"tool_choice" is {value!r} but the request offers no tools')
        if choice.mode == "function" and choice.name not in {t["function"]["name"] for t in tools}:
            raise BadRequest(f'"tool_choice" names the function {choice.name!r}, which is not among the tools')
        return choice

    def to_json(self) -> str | dict[str, str] | None:
        """The runner's form: None (auto), "required", or ``{"name": ...}``; "none" never reaches it."""
        if self.mode == "required":
            return "required"
        if self.mode == "function":
            return {"name": self.name or ""}
        return None
