"""An Anthropic Messages body → a native chat request.

System and content blocks become native messages, ``tool_use`` blocks ``tool_calls``, each
``tool_result`` a ``tool`` message named after its call, client tools function tools, ``tool_choice``
the native choice (enforced with a grammar), ``thinking`` or ``output_config.effort`` ``think``.
Shapes follow Anthropic's API and, where it serves them, Ollama's ``/v1/messages``; anything that
cannot be served (server tools, images in ``system``) is a 400 before a model is taken.
"""

from __future__ import annotations

import json
from typing import Any

from llmhost.api.tools import arguments_object
from llmhost.api.types import ChatRequest, JsonObject, field_of
from llmhost.daemon.image_inputs import image_from_source
from llmhost.errors import BadRequest


def chat_request(body: JsonObject, *, counting: bool = False) -> ChatRequest:
    """An Anthropic request body → a native chat request (``counting``: for count_tokens, no max_tokens)."""
    messages = field_of(body, "messages", list)
    if not messages:
        raise BadRequest('"messages" is required: a non-empty array of messages')
    system = _system(body.get("system"))
    tools = _tools(body.get("tools"))
    tool_choice, parallel = _tool_choice(body.get("tool_choice"), tools)
    native = {
        "model": body.get("model"),
        "messages": ([{"role": "system", "content": system}] if system else []) + _messages(messages),
        "options": {"num_predict": 0} if counting else _options(body),
        "stream": False if counting else field_of(body, "stream", bool, False),
        "tools": tools or None,
        "tool_choice": tool_choice,
        "parallel_tool_calls": parallel,
        "think": _think(body),
        # Counting wants the whole prompt's length: refuse a prompt too long to fit rather than cut it.
        "truncate": not counting,
    }
    return ChatRequest.from_json(native)


def _options(body: JsonObject) -> JsonObject:
    """Sampling fields → native options; unset ones keep the model's (as Ollama's /v1/messages does)."""
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest('"max_tokens" is required and must be a positive integer')
    options: JsonObject = {"num_predict": max_tokens}
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            options[name] = body[name]
    stop = field_of(body, "stop_sequences", list)
    if stop:
        if not all(isinstance(s, str) for s in stop):
            raise BadRequest('"stop_sequences" must be an array of strings')
        options["stop"] = stop
    return options


def _system(value: Any) -> str:
    """``system``: a string or text blocks (joined by blank lines)."""
    if value is None or isinstance(value, str):
        return value or ""
    return _joined_text(value, "system")


def _joined_text(blocks: Any, where: str) -> str:
    if not isinstance(blocks, list):
        raise BadRequest(f'"{where}" must be a string or an array of text blocks')
    texts = []
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "image":
            raise BadRequest(f'invalid block at {where}[{i}]: "system" holds text blocks only')
        if kind != "text" or not isinstance(block.get("text"), str):
            raise BadRequest(f'invalid block at {where}[{i}]: expected {{"type": "text", "text": "..."}}')
        texts.append(block["text"])
    return "\n\n".join(texts)


def _messages(messages: list[Any]) -> list[JsonObject]:
    """Anthropic messages → native ones; each tool result names its tool from the matching tool_use."""
    native: list[JsonObject] = []
    names: dict[str, str] = {}  # tool_use id → tool name, from the assistant turns so far
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise BadRequest(f'invalid message at messages[{i}]: expected {{"role": "user" or "assistant", '
                             '"content": ...}')
        content = m.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list) or not content:
            raise BadRequest(f'invalid message at messages[{i}]: "content" must be a string or a non-empty array '
                             'of blocks')
        native.extend(_message(m["role"], content, f"messages[{i}]", names))
    return native


def _message(role: str, blocks: list[Any], where: str, names: dict[str, str]) -> list[JsonObject]:
    """One Anthropic message → native messages: tool results first (each its own ``tool`` message), then
    the text, thinking and tool calls together (as Ollama orders them)."""
    texts, thinking, calls, results, images = [], [], [], [], []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in ("text", "thinking") and not isinstance(block.get(kind), str):
            raise BadRequest(f'invalid {kind} block at {at}: "{kind}" must be a string')
        if kind == "text":
            texts.append(block["text"])
        elif kind == "thinking":
            thinking.append(block["thinking"])
        elif kind == "redacted_thinking":
            continue  # encrypted by Anthropic: nothing a local model can read
        elif kind == "tool_use":
            calls.append(_tool_use(block, at))
            names[calls[-1]["id"]] = calls[-1]["function"]["name"]
        elif kind == "tool_result":
            results.append(_tool_result(block, at, names))
        elif kind == "image":
            images.append(image_from_source(block.get("source")))
        else:
            raise BadRequest(f"invalid block at {at}: unsupported type {json.dumps(kind)} (expected text, "
                             "image, thinking, tool_use or tool_result)")
    if results and role != "user":
        raise BadRequest(f"invalid message at {where}: tool_result blocks belong in a user message")
    if not (texts or thinking or calls or images):
        return results
    turn: JsonObject = {"role": role, "content": "\n\n".join(texts)}
    if images:
        turn["images"] = images
    if thinking:
        turn["thinking"] = "".join(thinking)
    if calls:
        turn["tool_calls"] = calls
    return [*results, turn]


def _tool_use(block: JsonObject, at: str) -> JsonObject:
    call_id, name = block.get("id"), block.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise BadRequest(f'invalid tool_use block at {at}: "id" and "name" must be non-empty strings')
    return {"id": call_id, "function": {"name": name, "arguments": arguments_object(block.get("input"), at)}}


def _tool_result(block: JsonObject, at: str, names: dict[str, str]) -> JsonObject:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f'invalid tool_result block at {at}: "tool_use_id" must be a non-empty string')
    content = block.get("content")
    text = content if isinstance(content, str) else "" if content is None else _joined_text(content, at + ".content")
    if block.get("is_error"):
        # The native message has no error flag: say it in the text, so the model knows the call failed.
        text = "Error: " + text
    return {"role": "tool", "content": text, "tool_call_id": call_id, "tool_name": names.get(call_id, "")}


def _tools(value: Any) -> list[JsonObject]:
    """Client tools ``{name, description, input_schema}`` → native function tools."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest('"tools" must be an array of tools')
    return [_tool(tool, i) for i, tool in enumerate(value)]


def _tool(tool: Any, index: int) -> JsonObject:
    if not isinstance(tool, dict):
        raise BadRequest(f"invalid tool at tools[{index}]: expected an object")
    kind = tool.get("type") or "custom"
    if kind != "custom":
        # Anthropic's server tools (web search, code execution, …) run on Anthropic's side.
        raise BadRequest(f"tool type {json.dumps(kind)} at tools[{index}] is not supported: only client tools "
                         "({name, description, input_schema}) are")
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise BadRequest(f'invalid tool at tools[{index}]: "name" must be a non-empty string')
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise BadRequest(f'invalid tool at tools[{index}]: "input_schema" must be a JSON schema object')
    function = {"name": tool.get("name"), "parameters": schema}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _tool_choice(value: Any, tools: list[JsonObject]) -> tuple[Any, bool]:
    """``tool_choice`` → the native choice and ``parallel_tool_calls``.

    auto → "auto", any → "required", tool → that function, none → "none" (no tools offered).
    """
    if value is None:
        return None, True
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise BadRequest('invalid "tool_choice": expected {"type": "auto" | "any" | "tool" | "none"}')
    if kind in ("any", "tool") and not tools:
        raise BadRequest(f'"tool_choice" is {json.dumps(value)} but the request offers no tools')
    parallel = not value.get("disable_parallel_tool_use", False)
    if kind == "tool":
        if not isinstance(value.get("name"), str):
            raise BadRequest('"tool_choice" of type "tool" needs the tool\'s "name"')
        return {"type": "function", "function": {"name": value["name"]}}, parallel
    return {"any": "required"}.get(kind, kind), parallel


_EFFORT_TO_THINK = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "max"}  # Ollama's


def _think(body: JsonObject) -> bool | str | None:
    """``thinking`` (enabled → true, disabled → false, adaptive or absent → the model's default), else
    ``output_config.effort`` as a level (as Ollama reads it)."""
    thinking = body.get("thinking")
    if thinking is not None:
        kind: object = thinking.get("type") if isinstance(thinking, dict) else None
        if kind not in ("enabled", "disabled", "adaptive"):
            raise BadRequest('invalid "thinking": expected {"type": "enabled", "budget_tokens": N}, '
                             '{"type": "disabled"} or {"type": "adaptive"}')
        if kind != "adaptive":
            return kind == "enabled"
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    return _EFFORT_TO_THINK.get(effort) if isinstance(effort, str) else None
