"""An OpenAI request body (``/v1/chat/completions``, ``/v1/completions``) → a native request.

As Ollama translates them: sampling fields become options with OpenAI's defaults, each text part of
a message its own native message, tool-call arguments (JSON strings) objects, ``response_format`` a
``format``, ``reasoning_effort`` a ``think`` level. Everything is validated here, before a model is
taken. The Responses API reuses the effort mapping and the tool-name lookup.
"""

from __future__ import annotations

import json
from typing import Any

from llmhost.api.tools import arguments_object
from llmhost.api.types import ChatRequest, GenerateRequest, JsonObject
from llmhost.daemon.image_inputs import image_from_url, image_url_of
from llmhost.errors import BadRequest


def chat_request(body: JsonObject) -> ChatRequest:
    """A ``/v1/chat/completions`` body → the native chat request (400 for what cannot be served)."""
    native = {
        "model": body.get("model"),
        "messages": _messages(body.get("messages")),
        "options": _options(body),
        "format": _format(body),
        "stream": bool(body.get("stream", False)),
        "tools": body.get("tools"),
        "tool_choice": body.get("tool_choice"),
        "parallel_tool_calls": body.get("parallel_tool_calls"),
        "think": think_from_effort(body),
        "logit_bias": body.get("logit_bias"),
        **_logprobs(body),
    }
    return ChatRequest.from_json(native)


def completion_request(body: JsonObject) -> GenerateRequest:
    """A ``/v1/completions`` body → the native generate request (one prompt; ``logprobs`` a count)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest('"prompt" must be a string')
    logprobs = body.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)):
        raise BadRequest('invalid value for "logprobs": expected an integer')
    return GenerateRequest.from_json({
        "model": body.get("model"), "prompt": prompt, "suffix": body.get("suffix"),
        "options": _options(body, legacy=True), "format": _format(body), "stream": bool(body.get("stream", False)),
        "logit_bias": body.get("logit_bias"),
        "logprobs": bool(logprobs), "top_logprobs": logprobs or None,
    })


def include_usage(body: JsonObject) -> bool:
    """``stream_options.include_usage``: whether a stream ends with a usage chunk."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise BadRequest('invalid value for "stream_options": expected an object')
    return bool(options.get("include_usage"))


_EFFORT_TO_THINK: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                                           "high": "high", "max": "max", "xhigh": "max", "ultra": "max"}


def think_from_effort(body: JsonObject) -> bool | str | None:
    """``reasoning.effort`` or ``reasoning_effort`` → Ollama's ``think`` (as Ollama maps them)."""
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else body.get("reasoning_effort")
    if effort is None or effort == "":
        return None
    if effort not in _EFFORT_TO_THINK:
        raise BadRequest(f'invalid reasoning value: {json.dumps(effort)} (must be "minimal", "low", "medium", '
                         '"high", "xhigh", "ultra", "max", or "none")')
    return _EFFORT_TO_THINK[effort]


def tool_name_of_call(messages: list[Any], call_id: Any) -> str:
    """The function name of the (last) assistant tool call with ``call_id``."""
    for m in reversed(messages):
        for call in (m.get("tool_calls") or []) if isinstance(m, dict) else []:
            if isinstance(call, dict) and call.get("id") == call_id and isinstance(call.get("function"), dict):
                return str(call["function"].get("name") or "")
    return ""


def _options(body: JsonObject, *, legacy: bool = False) -> JsonObject:
    """OpenAI sampling fields → Ollama options (validated by the native request types).

    Defaults are Ollama's for these routes: temperature and top_p 1.0 (OpenAI's), not the native 0.8/0.9;
    /v1/completions also sends its zero penalties, as Ollama does.
    """
    options: JsonObject = {"temperature": 1.0, "top_p": 1.0}
    if legacy:
        options.update(frequency_penalty=0.0, presence_penalty=0.0)
    for name in ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty"):
        if body.get(name) is not None:
            options[name] = body[name]
    if legacy and body.get("top_p") == 0:
        options["top_p"] = 1.0
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        options["num_predict"] = limit
    stop = body.get("stop")
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif stop is not None:
        options["stop"] = stop
    return options


def _format(body: JsonObject) -> Any:
    response_format = body.get("response_format")
    if not response_format:
        return None
    if not isinstance(response_format, dict):
        raise BadRequest('invalid value for "response_format": expected an object')
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise BadRequest('"response_format.json_schema.schema" must be a JSON schema object')
        return schema
    if kind in (None, "text"):
        return None
    raise BadRequest(f'invalid response_format type {kind!r}; expected "text", "json_object" or "json_schema"')


def _logprobs(body: JsonObject) -> JsonObject:
    return {"logprobs": body.get("logprobs"), "top_logprobs": body.get("top_logprobs")}


def _messages(messages: Any) -> list[JsonObject]:
    """OpenAI messages → native ones (each text or image part its own message, as Ollama splits them)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest('"messages" must be a non-empty array')
    native: list[JsonObject] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"invalid message at index {i}: expected an object")
        extra = {"thinking": m.get("reasoning") or m.get("reasoning_content"),
                 "tool_calls": _tool_calls_in(m.get("tool_calls"), i),
                 "tool_call_id": m.get("tool_call_id")}
        if str(m.get("role", "")).lower() == "tool":
            extra["tool_name"] = m.get("name") or tool_name_of_call(messages, m.get("tool_call_id"))
        extra = {k: v for k, v in extra.items() if v}
        native.extend(_split_content(m.get("role"), m.get("content"), extra, i))
    return native


def _split_content(role: Any, content: Any, extra: JsonObject, index: int) -> list[JsonObject]:
    if isinstance(content, str):
        return [{"role": role, "content": content, **extra}]
    if content is None:
        if not extra.get("tool_calls"):
            raise BadRequest(f"invalid message content type at index {index}: content is null and there are "
                             "no tool calls")
        return [{"role": role, "content": "", **extra}]
    if not isinstance(content, list):
        raise BadRequest(f"invalid message content type at index {index}: expected a string or an array of parts")
    parts: list[JsonObject] = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "image_url":
            # Each image is a message of its own with empty content, as in Ollama.
            parts.append({"role": role, "content": "", "images": [image_from_url(image_url_of(part))]})
            continue
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise BadRequest("invalid message format")
        parts.append({"role": role, "content": part["text"]})
    if parts:  # tool calls and the rest ride on the last part, as in Ollama
        parts[-1].update(extra)
    return parts


def _tool_calls_in(calls: Any, index: int) -> list[JsonObject] | None:
    """OpenAI tool calls (arguments as a JSON string) → native ones (arguments as an object)."""
    if calls is None:
        return None
    if not isinstance(calls, list):
        raise BadRequest(f'invalid message at index {index}: "tool_calls" must be an array')
    native = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise BadRequest(f'invalid tool call in message {index}: expected a "function" object')
        try:
            arguments = arguments_object(function.get("arguments"), f"messages[{index}]")
        except BadRequest:
            raise BadRequest("invalid tool call arguments") from None
        native.append({"id": call.get("id") or "", "function": {"name": function.get("name"), "arguments": arguments}})
    return native
