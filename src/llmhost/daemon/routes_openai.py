"""OpenAI-compatible routes (``/v1/*``), translated onto the native inference path.

Shapes follow OpenAI's API as Ollama serves it: SSE ``data:`` lines ending with ``data: [DONE]``,
errors as ``{"error": {"message", "type", "param", "code"}}``. ``/v1/completions`` treats the prompt
as raw text (no chat template), which is what that endpoint means.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from aiohttp import web

from llmhost.api.types import ChatRequest, EmbedRequest, GenerateRequest
from llmhost.daemon.http import read_json
from llmhost.daemon.inference import Completion, embed, start_completion
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


def _options(body: dict) -> dict:
    """OpenAI sampling fields → Ollama options (validated by the native request types)."""
    options: dict[str, Any] = {}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                         ("frequency_penalty", "frequency_penalty"), ("presence_penalty", "presence_penalty")):
        if body.get(theirs) is not None:
            options[ours] = body[theirs]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        options["num_predict"] = limit
    if body.get("stop") is not None:
        options["stop"] = body["stop"]
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


def _content(value: Any, index: int) -> str:
    """A message's content: a string, or an array of text parts."""
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list):
        parts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadRequest(f"message {index}: only text content parts are supported")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise BadRequest(f"message {index}: content must be a string or an array of parts")


def _chat_request(body: dict) -> ChatRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest('"messages" must be a non-empty array')
    native = {
        "model": body.get("model"),
        "messages": [{"role": m.get("role"), "content": _content(m.get("content"), i)} if isinstance(m, dict) else m
                     for i, m in enumerate(messages)],
        "options": _options(body),
        "format": _format(body),
        "stream": bool(body.get("stream", False)),
    }
    return ChatRequest.from_json(native)


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    req = _chat_request(body)
    completion = await start_completion(state_of(request), req)
    return await _respond(request, completion, req.stream, body, chat=True)


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest('"prompt" must be a string')
    req = GenerateRequest.from_json({"model": body.get("model"), "prompt": prompt, "raw": True,
                                     "options": _options(body), "format": _format(body),
                                     "stream": bool(body.get("stream", False))})
    completion = await start_completion(state_of(request), req)
    return await _respond(request, completion, req.stream, body, chat=False)


def _finish_reason(final: dict) -> str:
    return "length" if final.get("done_reason") == "length" else "stop"


def _usage(final: dict) -> dict:
    prompt = final.get("prompt_eval_count", 0) + final.get("prompt_cached_count", 0)
    completion = final.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _respond(request, completion: Completion, stream: bool, body: dict, chat: bool) -> web.StreamResponse:
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    base = {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": completion.model, "system_fingerprint": "fp_llmhost"}
    if not stream:
        text, final = [], {}
        async for line in completion.lines:
            if line.get("done"):
                final = line
            else:
                text.append(line.get("content", ""))
        content = "".join(text)
        choice = ({"index": 0, "message": {"role": "assistant", "content": content}} if chat
                  else {"index": 0, "text": content, "logprobs": None})
        choice["finish_reason"] = _finish_reason(final)
        return web.json_response({**base, "choices": [choice], "usage": _usage(final)})
    return await _stream_sse(request, completion, base, chat,
                             include_usage=bool((body.get("stream_options") or {}).get("include_usage")))


async def _stream_sse(request, completion: Completion, base: dict, chat: bool, include_usage: bool):
    base = {**base, "object": "chat.completion.chunk" if chat else "text_completion"}
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    lines = completion.lines
    first = await lines.__anext__()  # errors before the first token are still plain HTTP errors
    await response.prepare(request)

    def chunk(content: str | None, finish: str | None) -> dict:
        if chat:
            delta = {"role": "assistant", "content": content} if content is not None else {}
            return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return {**base, "choices": [{"index": 0, "text": content or "", "finish_reason": finish, "logprobs": None}]}

    async def send(obj: Any) -> None:
        await response.write(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")

    try:
        line = first
        while True:
            if line.get("done"):
                await send(chunk(None, _finish_reason(line)))
                if include_usage:
                    await send({**base, "choices": [], "usage": _usage(line)})
                break
            await send(chunk(line.get("content", ""), None))
            line = await lines.__anext__()
    except LlmhostError as e:
        await send({"error": {"message": e.message, "type": "api_error", "param": None, "code": None}})
    except StopAsyncIteration:
        pass
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    req = EmbedRequest.from_json({"model": body.get("model"), "input": body.get("input"),
                                  "dimensions": body.get("dimensions")})
    model, result, _ = await embed(state_of(request), req)
    from llmhost.daemon.routes_inference import cut_dimensions

    data = [{"object": "embedding", "embedding": cut_dimensions(v, req.dimensions), "index": i}
            for i, v in enumerate(result["embeddings"])]
    tokens = result.get("prompt_eval_count", 0)
    return web.json_response({"object": "list", "data": data, "model": model,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _model_object(entry) -> dict:
    return {"id": str(entry.name), "object": "model", "created": int(entry.modified_at.timestamp()),
            "owned_by": entry.name.namespace}


@routes.get("/v1/models")
async def models(request: web.Request) -> web.Response:
    entries = await asyncio.to_thread(state_of(request).store.list_models)
    return web.json_response({"object": "list", "data": [_model_object(e) for e in entries]})


@routes.get("/v1/models/{model:.+}")
async def model(request: web.Request) -> web.Response:
    store = state_of(request).store
    name = await asyncio.to_thread(store.resolve, request.match_info["model"])
    entry = next(e for e in await asyncio.to_thread(store.list_models) if e.name.key() == name.key())
    return web.json_response(_model_object(entry))


