"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``) on the native inference path.

A request becomes a native ``ChatRequest`` (system and content blocks → messages, ``tool_use`` →
``tool_calls``, ``tool_result`` → ``tool`` messages, ``tool_choice`` enforced with a grammar,
``thinking`` → ``think``), runs through ``start_completion``/``deltas`` like every other route, and
comes back as an Anthropic message or Anthropic's SSE events. Shapes follow Anthropic's API and,
where it serves them, Ollama's ``/v1/messages``. Errors are ``{"type": "error", "error": {"type",
"message"}}``, also mid-stream (``event: error``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import uuid
from typing import Any

from aiohttp import web

from llmhost.api.tools import arguments_object
from llmhost.api.types import ChatRequest, field_of
from llmhost.daemon.http import read_json
from llmhost.daemon.inference import Completion, Delta, deltas, start_completion
from llmhost.daemon.state import DaemonState, state_of
from llmhost.errors import BadRequest, LlmhostError
from llmhost.registry.capabilities import capabilities

log = logging.getLogger(__name__)
routes = web.RouteTableDef()

PATH = "/v1/messages"
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                503: "overloaded_error", 529: "overloaded_error"}


def error_body(error: LlmhostError) -> dict:
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(error.status, "api_error"), "message": error.message}}


@web.middleware
async def anthropic_errors(request: web.Request, handler):
    """Errors on /v1/messages* in Anthropic's shape; must sit inside ``openai_errors`` (also /v1/)."""
    try:
        return await handler(request)
    except LlmhostError as e:
        if request.path != PATH and not request.path.startswith(PATH + "/"):
            raise
        if e.status >= 500:
            log.warning("%s %s: %s", request.method, request.path, e.message)
        return web.json_response(error_body(e), status=e.status)


# --- request → native ----------------------------------------------------------------------------


def _chat_request(body: dict, *, counting: bool = False) -> ChatRequest:
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


def _options(body: dict) -> dict:
    """Sampling fields → native options; unset ones keep the model's (as Ollama's /v1/messages does)."""
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest('"max_tokens" is required and must be a positive integer')
    options: dict[str, Any] = {"num_predict": max_tokens}
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
            raise BadRequest("this model does not support images")
        if kind != "text" or not isinstance(block.get("text"), str):
            raise BadRequest(f'invalid block at {where}[{i}]: expected {{"type": "text", "text": "..."}}')
        texts.append(block["text"])
    return "\n\n".join(texts)


def _messages(messages: list) -> list[dict]:
    """Anthropic messages → native ones; each tool result names its tool from the matching tool_use."""
    native: list[dict] = []
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


def _message(role: str, blocks: list, where: str, names: dict[str, str]) -> list[dict]:
    """One Anthropic message → native messages: tool results first (each its own ``tool`` message), then
    the text, thinking and tool calls together (as Ollama orders them)."""
    texts, thinking, calls, results = [], [], [], []
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
            raise BadRequest("this model does not support images")
        else:
            raise BadRequest(f"invalid block at {at}: unsupported type {json.dumps(kind)} (expected text, "
                             "thinking, tool_use or tool_result)")
    if results and role != "user":
        raise BadRequest(f"invalid message at {where}: tool_result blocks belong in a user message")
    if not (texts or thinking or calls):
        return results
    turn: dict[str, Any] = {"role": role, "content": "\n\n".join(texts)}
    if thinking:
        turn["thinking"] = "".join(thinking)
    if calls:
        turn["tool_calls"] = calls
    return [*results, turn]


def _tool_use(block: dict, at: str) -> dict:
    call_id, name = block.get("id"), block.get("name")
    if not isinstance(call_id, str) or not call_id or not isinstance(name, str) or not name:
        raise BadRequest(f'invalid tool_use block at {at}: "id" and "name" must be non-empty strings')
    return {"id": call_id, "function": {"name": name, "arguments": arguments_object(block.get("input"), at)}}


def _tool_result(block: dict, at: str, names: dict[str, str]) -> dict:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f'invalid tool_result block at {at}: "tool_use_id" must be a non-empty string')
    content = block.get("content")
    text = content if isinstance(content, str) else "" if content is None else _joined_text(content, at + ".content")
    if block.get("is_error"):
        # The native message has no error flag: say it in the text, so the model knows the call failed.
        text = "Error: " + text
    return {"role": "tool", "content": text, "tool_call_id": call_id, "tool_name": names.get(call_id, "")}


def _tools(value: Any) -> list[dict]:
    """Client tools ``{name, description, input_schema}`` → native function tools."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest('"tools" must be an array of tools')
    return [_tool(tool, i) for i, tool in enumerate(value)]


def _tool(tool: Any, index: int) -> dict:
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


def _tool_choice(value: Any, tools: list[dict]) -> tuple[Any, bool]:
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


def _think(body: dict) -> bool | str | None:
    """``thinking`` (enabled → true, disabled → false, adaptive or absent → the model's default), else
    ``output_config.effort`` as a level (as Ollama reads it)."""
    thinking = body.get("thinking")
    if thinking is not None:
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind not in ("enabled", "disabled", "adaptive"):
            raise BadRequest('invalid "thinking": expected {"type": "enabled", "budget_tokens": N}, '
                             '{"type": "disabled"} or {"type": "adaptive"}')
        if kind != "adaptive":
            return kind == "enabled"
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    return _EFFORT_TO_THINK.get(effort) if isinstance(effort, str) else None


async def _start(state: DaemonState, req: ChatRequest) -> Completion:
    """Start the completion; thinking asked of a model that cannot think is dropped, not refused.

    As Ollama does here: Claude Code and the like ask for thinking whatever the model.
    """
    record = await state.in_store(state.store.load, req.model)
    if req.think not in (None, False) and "thinking" not in capabilities(record):
        log.debug("%s cannot think: answering without thinking", req.model)
        req = dataclasses.replace(req, think=None)
    return await start_completion(state, req, record)


# --- routes --------------------------------------------------------------------------------------


@routes.post(PATH)
async def messages(request: web.Request) -> web.StreamResponse:
    req = _chat_request(await read_json(request))
    async with await _start(state_of(request), req) as completion, contextlib.aclosing(deltas(completion)) as items:
        message = {"id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
                   "model": completion.model}
        if req.stream:
            return await _stream(request, items, message)
        return web.json_response(await _whole(items, message))


@routes.post(PATH + "/count_tokens")
async def count_tokens(request: web.Request) -> web.Response:
    """The rendered prompt's length, template and tools included.

    Rendering lives in the runner, whose ``/tokenize`` takes plain text only, so the prompt is run
    with ``num_predict: 0``: evaluated (its prefix then warms the KV cache for the real request) but
    nothing generated. The final line's evaluated and cached counts add up to the prompt.
    """
    req = _chat_request(await read_json(request), counting=True)
    final: dict = {}
    async with await _start(state_of(request), req) as completion, contextlib.aclosing(deltas(completion)) as items:
        async for item in items:
            final = item if isinstance(item, dict) else final
    return web.json_response({"input_tokens": final.get("prompt_eval_count", 0)
                                              + final.get("prompt_cached_count", 0)})


# --- native → response ---------------------------------------------------------------------------


def _stop_reason(final: dict, called: bool) -> str:
    # The runner's "stop" covers an end-of-generation token and a stop string alike, without saying
    # which string matched: "stop_sequence" cannot be told apart, so it reads "end_turn".
    if final.get("done_reason") == "length":
        return "max_tokens"
    return "tool_use" if called else "end_turn"


def _usage(final: dict) -> dict:
    """Anthropic's accounting: ``input_tokens`` excludes cache reads (the prompt is input_tokens +
    cache_read_input_tokens + cache_creation_input_tokens), unlike Ollama's ``prompt_eval_count``.
    The runner's final line already counts that way: ``prompt_eval_count`` is what it evaluated,
    ``prompt_cached_count`` what the KV cache supplied. Caching here is automatic and free, so
    nothing is ever "created"."""
    return {"input_tokens": final.get("prompt_eval_count", 0), "output_tokens": final.get("eval_count", 0),
            "cache_read_input_tokens": final.get("prompt_cached_count", 0), "cache_creation_input_tokens": 0}


def _tool_use_block(call: dict, input_: Any) -> dict:
    return {"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input_}


# Anthropic signs its thinking so it can be checked when sent back; a local model's thinking has no
# signature to check (sent back, it is taken as is). The field is there because clients expect it.
_SIGNATURE = ""


async def _whole(items, message: dict) -> dict:
    text, thinking, calls, final = [], [], [], {}
    async for item in items:
        if isinstance(item, Delta):
            text.append(item.content)
            thinking.append(item.thinking)
            calls.extend(item.tool_calls)
        else:
            final = item
    content: list[dict] = []
    if any(thinking):
        content.append({"type": "thinking", "thinking": "".join(thinking), "signature": _SIGNATURE})
    if any(text):
        content.append({"type": "text", "text": "".join(text)})
    content += [_tool_use_block(c, c["function"]["arguments"]) for c in calls]
    return {**message, "content": content, "stop_reason": _stop_reason(final, bool(calls)), "stop_sequence": None,
            "usage": _usage(final)}


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data}, ensure_ascii=False)}\n\n".encode()


class _Blocks:
    """Deltas → content-block events: a thinking or text block stays open while its kind continues;
    a tool call (released whole by the runner) is a block of its own with one ``input_json_delta``."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None
        self.called = False

    def events(self, delta: Delta) -> list[bytes]:
        out = []
        for kind, piece in (("thinking", delta.thinking), ("text", delta.content)):
            if piece:
                if self.open != kind:
                    out += self.close() + self._start({"type": kind, kind: "", **(
                        {"signature": _SIGNATURE} if kind == "thinking" else {})})
                    self.open = kind
                out.append(_sse("content_block_delta", {"index": self.index,
                                                        "delta": {"type": f"{kind}_delta", kind: piece}}))
        for call in delta.tool_calls:
            out += self.close() + self._start(_tool_use_block(call, {}))
            arguments = json.dumps(call["function"]["arguments"], ensure_ascii=False)
            out.append(_sse("content_block_delta", {"index": self.index,
                                                    "delta": {"type": "input_json_delta", "partial_json": arguments}}))
            out.append(_sse("content_block_stop", {"index": self.index}))
            self.called = True
        return out

    def close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [_sse("content_block_stop", {"index": self.index})]

    def _start(self, block: dict) -> list[bytes]:
        self.index += 1
        return [_sse("content_block_start", {"index": self.index, "content_block": block})]


async def _stream(request: web.Request, items, message: dict) -> web.StreamResponse:
    first = await anext(items, {})  # errors before the first line are still plain HTTP errors
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    # The prompt's counts come with the final line only: message_start says 0 and message_delta
    # carries the real input and cache counts (Anthropic's clients take message_delta's over it).
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None, "usage": _usage({})}
    await response.write(_sse("message_start", {"message": start}) + _sse("ping", {}))
    blocks = _Blocks()
    try:
        item = first
        while isinstance(item, Delta):
            await response.write(b"".join(blocks.events(item)))
            item = await anext(items, {})
        delta = {"stop_reason": _stop_reason(item, blocks.called), "stop_sequence": None}
        await response.write(b"".join(blocks.close()) + _sse("message_delta", {"delta": delta, "usage": _usage(item)})
                             + _sse("message_stop", {}))
    except LlmhostError as e:
        await response.write(_sse("error", {"error": error_body(e)["error"]}))
    await response.write_eof()
    return response
