"""OpenAI-compatible routes (``/v1/*``), translated onto the native inference path.

Shapes follow OpenAI's API as Ollama serves it: SSE ``data:`` lines ending with ``data: [DONE]``,
errors as ``{"error": {"message", "type", "param", "code"}}``. ``/v1/completions`` renders the prompt
through the chat template, as Ollama's does (it maps onto /api/generate).
"""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from typing import Any

from aiohttp import web

from llmhost.api.types import ChatRequest, EmbedRequest, GenerateRequest
from llmhost.daemon.http import read_json
from llmhost.api.tools import arguments_object
from llmhost.daemon.inference import Completion, Delta, deltas, embed, start_completion
from llmhost.daemon.routes_inference import cut_dimensions
from llmhost.daemon.state import state_of
from llmhost.errors import BadRequest, LlmhostError

routes = web.RouteTableDef()

_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error"}


def openai_error(error: LlmhostError) -> web.Response:
    return web.json_response({"error": {"message": error.message, "type": _ERROR_TYPES.get(error.status, "api_error"),
                                        "param": None, "code": None}}, status=error.status)


@web.middleware
async def openai_errors(request: web.Request, handler):
    """Errors on /v1 routes in OpenAI's shape (the native middleware would give Ollama's)."""
    try:
        return await handler(request)
    except LlmhostError as e:
        if request.path.startswith("/v1/"):
            return openai_error(e)
        raise


def _options(body: dict, *, legacy: bool = False) -> dict:
    """OpenAI sampling fields → Ollama options (validated by the native request types).

    Defaults are Ollama's for these routes: temperature and top_p 1.0 (OpenAI's), not the native 0.8/0.9;
    /v1/completions also sends its zero penalties, as Ollama does.
    """
    options: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0}
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


def _format(body: dict) -> Any:
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


def _include_usage(body: dict) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise BadRequest('invalid value for "stream_options": expected an object')
    return bool(options.get("include_usage"))


_EFFORT_TO_THINK: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                                           "high": "high", "max": "max", "xhigh": "max", "ultra": "max"}


def think_from_effort(body: dict) -> bool | str | None:
    """``reasoning.effort`` or ``reasoning_effort`` → Ollama's ``think`` (as Ollama maps them)."""
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else body.get("reasoning_effort")
    if effort is None or effort == "":
        return None
    if effort not in _EFFORT_TO_THINK:
        raise BadRequest(f'invalid reasoning value: {json.dumps(effort)} (must be "minimal", "low", "medium", '
                         '"high", "xhigh", "ultra", "max", or "none")')
    return _EFFORT_TO_THINK[effort]


def _messages(messages: Any) -> list[dict]:
    """OpenAI messages → native ones (each text or image part its own message, as Ollama splits them)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest('"messages" must be a non-empty array')
    native: list[dict] = []
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


def _split_content(role: Any, content: Any, extra: dict, index: int) -> list[dict]:
    if isinstance(content, str):
        return [{"role": role, "content": content, **extra}]
    if content is None:
        if not extra.get("tool_calls"):
            raise BadRequest(f"invalid message content type at index {index}: content is null and there are "
                             "no tool calls")
        return [{"role": role, "content": "", **extra}]
    if not isinstance(content, list):
        raise BadRequest(f"invalid message content type at index {index}: expected a string or an array of parts")
    parts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            if isinstance(part, dict) and part.get("type") == "image_url":
                raise BadRequest("this model does not support images")
            raise BadRequest("invalid message format")
        parts.append({"role": role, "content": part["text"]})
    if parts:  # tool calls and the rest ride on the last part, as in Ollama
        parts[-1].update(extra)
    return parts


def _tool_calls_in(calls: Any, index: int) -> list[dict] | None:
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


def tool_name_of_call(messages: list, call_id: Any) -> str:
    """The function name of the (last) assistant tool call with ``call_id``."""
    for m in reversed(messages):
        for call in (m.get("tool_calls") or []) if isinstance(m, dict) else []:
            if isinstance(call, dict) and call.get("id") == call_id and isinstance(call.get("function"), dict):
                return str(call["function"].get("name") or "")
    return ""


def _logprobs(body: dict) -> dict:
    return {"logprobs": body.get("logprobs"), "top_logprobs": body.get("top_logprobs")}


def _chat_request(body: dict) -> ChatRequest:
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


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    req = _chat_request(body)
    include_usage = _include_usage(body)
    async with await start_completion(state_of(request), req) as completion:
        return await _respond(request, completion, req.stream, include_usage, chat=True)


def _completion_request(body: dict) -> GenerateRequest:
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


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    """Rendered like Ollama's: through /api/generate's path, the chat template applied."""
    body = await read_json(request)
    req = _completion_request(body)
    include_usage = _include_usage(body)
    async with await start_completion(state_of(request), req) as completion:
        return await _respond(request, completion, req.stream, include_usage, chat=False)


def _finish_reason(final: dict, called: bool) -> str:
    reason = final.get("done_reason") or "stop"
    return "tool_calls" if reason == "stop" and called else reason


def _usage(final: dict) -> dict:
    cached = final.get("prompt_cached_count", 0)
    prompt = final.get("prompt_eval_count", 0) + cached
    completion = final.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _openai_calls(calls: Any) -> list[dict]:
    return [{"id": c["id"], "index": c["function"]["index"], "type": "function",
             "function": {"name": c["function"]["name"],
                          "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False)}}
            for c in calls]


def _reasoning(thinking: str) -> dict:
    # Ollama's /v1 field is "reasoning"; most OpenAI-protocol clients read "reasoning_content".
    return {"reasoning": thinking, "reasoning_content": thinking} if thinking else {}


async def _respond(request, completion: Completion, stream: bool, include_usage: bool, chat: bool):
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    base = {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": completion.model, "system_fingerprint": "fp_llmhost"}
    if stream:
        return await _stream_sse(request, completion, base, chat, include_usage)
    text, thinking, calls, logprobs, final = [], [], [], [], {}
    async for item in deltas(completion):
        if isinstance(item, Delta):
            text.append(item.content)
            thinking.append(item.thinking)
            calls.extend(item.tool_calls)
            logprobs.extend(item.logprobs)
        else:
            final = item
    if chat:
        message = {"role": "assistant", "content": "".join(text), **_reasoning("".join(thinking))}
        if calls:
            message["tool_calls"] = _openai_calls(calls)
        choice: dict[str, Any] = {"index": 0, "message": message}
    else:
        choice = {"index": 0, "text": "".join(text)}
    choice["finish_reason"] = _finish_reason(final, bool(calls))
    choice.update(_logprobs_field(logprobs))
    return web.json_response({**base, "choices": [choice], "usage": _usage(final)})


async def _stream_sse(request, completion: Completion, base: dict, chat: bool, include_usage: bool):
    base = {**base, "object": "chat.completion.chunk" if chat else "text_completion"}
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    items = deltas(completion)
    first = await items.__anext__()  # errors before the first token are still plain HTTP errors
    await response.prepare(request)

    async def send(choice: dict | None, **extra: Any) -> None:
        obj = {**base, "choices": [choice] if choice else [], **extra}
        await response.write(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")

    called, role_sent = False, False
    try:
        item = first
        while isinstance(item, Delta):
            if chat:
                for choice in _chat_chunks(item, include_role=not role_sent):
                    await send(choice)
                role_sent = True
            else:
                await send({"index": 0, "text": item.content, "finish_reason": None,
                            **_logprobs_field(item.logprobs)})
            called = called or bool(item.tool_calls)
            item = await items.__anext__()
        finish = _finish_reason(item, called)
        await send({"index": 0, "delta": {}, "finish_reason": finish} if chat
                   else {"index": 0, "text": "", "finish_reason": finish})
        if include_usage:
            await send(None, usage=_usage(item))
    except LlmhostError as e:
        await response.write(b"data: " + json.dumps({"error": {"message": e.message, "type": "api_error",
                                                                "param": None, "code": None}}).encode() + b"\n\n")
    except StopAsyncIteration:
        pass
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _chat_chunks(delta: Delta, include_role: bool) -> list[dict]:
    """A delta as chat chunks: reasoning in a chunk of its own before content or calls (as Ollama)."""
    choices = []
    head = {"role": "assistant"} if include_role else {}
    logprobs = _logprobs_field(delta.logprobs)
    if delta.thinking:
        choices.append({"index": 0, "delta": {**head, **_reasoning(delta.thinking)}, "finish_reason": None,
                        **logprobs})
        if not (delta.content or delta.tool_calls):
            return choices
        head, logprobs = {}, {}
    body: dict[str, Any] = {**head, "content": delta.content}
    if delta.tool_calls:
        body["tool_calls"] = _openai_calls(delta.tool_calls)
    choices.append({"index": 0, "delta": body, "finish_reason": None, **logprobs})
    return choices


def _logprobs_field(logprobs) -> dict:
    """``logprobs`` in OpenAI's shape, left out when there are none (as Ollama does)."""
    return {"logprobs": {"content": list(logprobs)}} if logprobs else {}


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest(f'invalid value for "encoding_format": {encoding!r}; expected "float" or "base64"')
    req = EmbedRequest.from_json({"model": body.get("model"), "input": body.get("input"),
                                  "dimensions": body.get("dimensions")})
    model, result, _ = await embed(state_of(request), req)
    vectors = [cut_dimensions(v, req.dimensions) for v in result["embeddings"]]
    data = [{"object": "embedding", "embedding": _base64_floats(v) if encoding == "base64" else v, "index": i}
            for i, v in enumerate(vectors)]
    tokens = result.get("prompt_eval_count", 0)
    return web.json_response({"object": "list", "data": data, "model": model,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _model_object(entry) -> dict:
    return {"id": str(entry.name), "object": "model", "created": int(entry.modified_at.timestamp()),
            "owned_by": entry.name.namespace}


@routes.get("/v1/models")
async def models(request: web.Request) -> web.Response:
    state = state_of(request)
    entries = await state.in_store(state.store.list_models)
    return web.json_response({"object": "list", "data": [_model_object(e) for e in entries]})


@routes.get("/v1/models/{model:.+}")
async def model(request: web.Request) -> web.Response:
    state = state_of(request)
    name = await state.in_store(state.store.resolve, request.match_info["model"])
    entry = next(e for e in await state.in_store(state.store.list_models) if e.name.key() == name.key())
    return web.json_response(_model_object(entry))


