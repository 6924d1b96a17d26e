"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``) on the native inference path.

A request becomes a native ``ChatRequest`` (``anthropic_request``), runs through
``start_completion``/``deltas`` like every other route, and comes back as an Anthropic message or
Anthropic's SSE events (``anthropic_output``). Errors are Anthropic's ``{"type": "error", "error":
{"type", "message"}}`` (``dialects``), also mid-stream (``event: error``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid

from aiohttp import web

from llmhost.api.types import ChatRequest, JsonObject
from llmhost.daemon.anthropic_output import Blocks, end_events, sse, start_events, whole_message
from llmhost.daemon.anthropic_request import chat_request
from llmhost.daemon.dialects import ANTHROPIC_PATH, Dialect, in_band_error
from llmhost.daemon.http import read_json
from llmhost.daemon.inference import Completion, Delta, Deltas, collect, deltas, start_completion
from llmhost.daemon.state import DaemonState, state_of
from llmhost.registry.capabilities import capabilities

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


@routes.post(ANTHROPIC_PATH)
async def messages(request: web.Request) -> web.StreamResponse:
    req = chat_request(await read_json(request))
    async with await _start(state_of(request), req) as completion:
        message = {"id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant",
                   "model": completion.model}
        if req.stream:
            async with contextlib.aclosing(deltas(completion)) as items:
                return await _stream(request, items, message)
        collected, final = await collect(completion)
        return web.json_response(whole_message(message, collected, final))


@routes.post(ANTHROPIC_PATH + "/count_tokens")
async def count_tokens(request: web.Request) -> web.Response:
    """The rendered prompt's length, template and tools included.

    Rendering lives in the runner, whose ``/tokenize`` takes plain text only, so the prompt is run
    with ``num_predict: 0``: evaluated (its prefix then warms the KV cache for the real request) but
    nothing generated. The final line's evaluated and cached counts add up to the prompt.
    """
    req = chat_request(await read_json(request), counting=True)
    async with await _start(state_of(request), req) as completion:
        _, final = await collect(completion)
    return web.json_response({"input_tokens": final.get("prompt_eval_count", 0)
                                              + final.get("prompt_cached_count", 0)})


async def _start(state: DaemonState, req: ChatRequest) -> Completion:
    """Start the completion; thinking asked of a model that cannot think is dropped, not refused.

    As Ollama does here: Claude Code and the like ask for thinking whatever the model.
    """
    record = await state.in_store(state.store.load, req.model)
    if req.think not in (None, False) and "thinking" not in capabilities(record):
        log.debug("%s cannot think: answering without thinking", req.model)
        req = dataclasses.replace(req, think=None)
    return await start_completion(state, req, record)


async def _stream(request: web.Request, items: Deltas, message: JsonObject) -> web.StreamResponse:
    first: Delta | JsonObject = await anext(items, {})  # errors before the first line are still plain HTTP errors
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(start_events(message))
    blocks = Blocks()
    try:
        item = first
        while isinstance(item, Delta):
            await response.write(b"".join(blocks.events(item)))
            item = await anext(items, {})
        await response.write(end_events(blocks, item))
    except ConnectionError:
        raise
    except Exception as e:
        await response.write(sse("error", {"error": in_band_error(e, Dialect.ANTHROPIC)["error"]}))
    await response.write_eof()
    return response
