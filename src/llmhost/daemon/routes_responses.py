"""OpenAI's Responses API (``/v1/responses``), stateful, translated onto the native inference path.

As ``routes_openai`` does for chat: the request becomes a native ``ChatRequest`` (``responses_request``),
runs through ``start_completion``/``deltas``, and comes back as a response object or as Responses' SSE
events (``responses_output``; ``event: <type>`` / ``data: {..., "sequence_number"}``, no ``[DONE]``).
Shapes follow the official client's types and Ollama's stateless ``/v1/responses``.

Beyond Ollama, a response is stored (``store``, default true) with the whole conversation behind it
(``responses_store.py``), and ``previous_response_id`` continues it: the client sends only the new
input, the native path renders the same prefix, and the runner continues from the KV cache it holds
(``usage.input_tokens_details.cached_tokens`` says how much). As in OpenAI's API, ``instructions``,
``tools`` and sampling fields apply to their own turn only; the model defaults to the previous one's.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator

from aiohttp import web

from llmhost.api.types import JsonObject
from llmhost.daemon.dialects import Dialect, in_band_error
from llmhost.daemon.http import read_json
from llmhost.daemon.inference import Completion, Delta, collect, deltas, start_completion
from llmhost.daemon.responses_output import Head, Output, response_usage
from llmhost.daemon.responses_request import Turn, make_turn
from llmhost.daemon.responses_store import RESPONSES_DIR, ResponseStore, StoredResponse, new_response_id
from llmhost.daemon.state import DaemonState, state_of
from llmhost.errors import BadRequest

routes = web.RouteTableDef()
STORE_KEY = web.AppKey("responses_store", ResponseStore)


def install(app: web.Application, state: DaemonState) -> None:
    """Add the Responses routes, storing responses under ``<models>/responses``."""
    app[STORE_KEY] = ResponseStore(state.settings.models / RESPONSES_DIR)
    app.add_routes(routes)


def store_of(request: web.Request) -> ResponseStore:
    return request.app[STORE_KEY]


@routes.post("/v1/responses")
async def create_response(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    previous_id = body.get("previous_response_id")
    previous = None if previous_id is None else await store_of(request).get(previous_id, "Previous response")
    turn = make_turn(body, previous)
    async with await start_completion(state_of(request), turn.request) as completion:
        head = Head(new_response_id(), int(time.time()), completion.model, previous_id, turn.echo)
        if turn.request.stream:
            async with contextlib.aclosing(deltas(completion)) as items:  # closed even if the client left
                return await _stream(request, items, completion, turn, head)
        collected, final = await collect(completion)
    output = Output()
    for delta in collected:
        output.feed(delta)
    _, response = await _finish(request, output, final, completion, turn, head)
    return web.json_response(response)


async def _finish(request: web.Request, output: Output, final: JsonObject, completion: Completion, turn: Turn,
                  head: Head) -> tuple[list[JsonObject], JsonObject]:
    """Close the output, build the response object and store it (before the client can ask for it)."""
    status = "incomplete" if final.get("done_reason") == "length" else "completed"
    events = output.finish(status)
    response = head.object(status, output.items, response_usage(final, completion))
    if turn.store:
        stored = StoredResponse(response, (*turn.conversation, output.answer()))
        await store_of(request).put(head.id, stored)
    return events, response


class EventStream:
    """Responses' SSE: ``event:`` and ``data:`` lines, each event numbered in order."""

    def __init__(self, response: web.StreamResponse):
        self.response = response
        self.sequence = 0

    async def send(self, event: JsonObject) -> None:
        data = json.dumps({**event, "sequence_number": self.sequence}, ensure_ascii=False)
        self.sequence += 1
        await self.response.write(f"event: {event['type']}\ndata: {data}\n\n".encode())


async def _stream(request: web.Request, items: AsyncIterator[Delta | JsonObject], completion: Completion, turn: Turn,
                  head: Head) -> web.StreamResponse:
    first = await items.__anext__()  # errors before the first line are still plain HTTP errors
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    events, output = EventStream(response), Output()
    for kind in ("response.created", "response.in_progress"):
        await events.send({"type": kind, "response": head.object("in_progress")})
    try:
        item = first
        while isinstance(item, Delta):
            for event in output.feed(item):
                await events.send(event)
            item = await anext(items, {})
        closing, final = await _finish(request, output, item, completion, turn, head)
        for event in closing:
            await events.send(event)
        await events.send({"type": f"response.{final['status']}", "response": final})
    except ConnectionError:
        raise
    except Exception as e:
        error = {"code": "server_error", "message": in_band_error(e, Dialect.OPENAI)["error"]["message"]}
        failed = head.object("failed", output.items, error=error)
        await events.send({"type": "response.failed", "response": failed})
    await response.write_eof()
    return response


@routes.get("/v1/responses/{response_id}")
async def retrieve_response(request: web.Request) -> web.Response:
    if request.query.get("stream", "").lower() == "true":
        raise BadRequest("streaming a stored response again is not supported; retrieve it without stream")
    stored = await store_of(request).get(request.match_info["response_id"])
    return web.json_response(stored.response)


@routes.delete("/v1/responses/{response_id}")
async def delete_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    await store_of(request).delete(response_id)
    return web.json_response({"id": response_id, "object": "response.deleted", "deleted": True})
