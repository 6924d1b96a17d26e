"""OpenAI-compatible routes (``/v1/*``), translated onto the native inference path.

Shapes follow OpenAI's API as Ollama serves it: SSE ``data:`` lines ending with ``data: [DONE]``,
errors in OpenAI's shape (``dialects``), also mid-stream. ``/v1/completions`` renders the prompt
through the chat template, as Ollama's does (it maps onto /api/generate). Requests are translated
in ``openai_request``, answers in ``openai_output``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import struct
from collections.abc import Callable
from typing import Any

from aiohttp import web

from llmhost.api.types import ChatRequest, EmbedRequest, GenerateRequest, JsonObject
from llmhost.daemon.dialects import Dialect, in_band_error
from llmhost.daemon.http import read_json
from llmhost.daemon.inference import Completion, Delta, Deltas, collect, deltas, embed, start_completion
from llmhost.daemon.openai_output import answer_base, delta_choices, final_choice, usage, whole_answer
from llmhost.daemon.openai_request import chat_request, completion_request, include_usage
from llmhost.daemon.routes_inference import cut_dimensions
from llmhost.daemon.state import state_of
from llmhost.errors import BadRequest
from llmhost.registry.store import ModelEntry

routes = web.RouteTableDef()


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, chat_request, chat=True)


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    """Rendered like Ollama's: through /api/generate's path, the chat template applied."""
    return await _complete(request, completion_request, chat=False)


async def _complete(request: web.Request, translate: Callable[[JsonObject], ChatRequest | GenerateRequest],
                    chat: bool) -> web.StreamResponse:
    body = await read_json(request)
    req = translate(body)
    with_usage = include_usage(body)
    async with await start_completion(state_of(request), req) as completion:
        return await _respond(request, completion, req.stream, with_usage, chat=chat)


async def _respond(request: web.Request, completion: Completion, stream: bool, include_usage: bool,
                   chat: bool) -> web.StreamResponse:
    base = answer_base(completion.model, chat)
    if stream:
        async with contextlib.aclosing(deltas(completion)) as items:  # closed even if the client left
            return await _stream_sse(request, items, base, chat, include_usage)
    collected, final = await collect(completion)
    return web.json_response(whole_answer(base, collected, final, chat))


async def _stream_sse(request: web.Request, items: Deltas, base: JsonObject, chat: bool,
                      include_usage: bool) -> web.StreamResponse:
    base = {**base, "object": "chat.completion.chunk" if chat else "text_completion"}
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    first = await items.__anext__()  # errors before the first token are still plain HTTP errors
    await response.prepare(request)

    async def send(choice: JsonObject | None, **extra: Any) -> None:
        await response.write(_data({**base, "choices": [choice] if choice else [], **extra}))

    called, role_sent = False, False
    try:
        item = first
        while isinstance(item, Delta):
            for choice in delta_choices(item, chat, include_role=not role_sent):
                await send(choice)
            role_sent = True
            called = called or bool(item.tool_calls)
            item = await items.__anext__()
        await send(final_choice(item, called, chat))
        if include_usage:
            await send(None, usage=usage(item))
    except StopAsyncIteration:
        pass
    except ConnectionError:
        raise
    except Exception as e:
        await response.write(_data(in_band_error(e, Dialect.OPENAI)))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _data(obj: JsonObject) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


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


def _model_object(entry: ModelEntry) -> JsonObject:
    return {"id": str(entry.name), "object": "model", "created": int(entry.modified_at.timestamp()),
            "owned_by": entry.name.namespace}
