"""Model management routes: tags, show, copy, delete, create, blobs, pull, version."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from aiohttp import web

from llmhost import OLLAMA_API_VERSION, __version__
from llmhost.api.types import JsonObject, field_of, model_field
from llmhost.daemon.bodies import BodyLimits, receive_blob
from llmhost.daemon.http import read_json, stream_ndjson
from llmhost.daemon.state import state_of
from llmhost.engine.gotemplate.values import format_float
from llmhost.errors import BadRequest, NotFound
from llmhost.registry.capabilities import capabilities, go_quote
from llmhost.registry.gguf_meta import read_gguf_info
from llmhost.registry.names import ModelName

routes = web.RouteTableDef()


@routes.get("/")  # and HEAD, as Ollama answers both
async def root(request: web.Request) -> web.Response:
    # Ollama's exact text: clients and scripts match on it to tell the server is up.
    return web.Response(text="Ollama is running")


@routes.get("/api/version")
async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": OLLAMA_API_VERSION, "llmhost": __version__})


@routes.get("/api/tags")
async def tags(request: web.Request) -> web.Response:
    state = state_of(request)
    entries = await state.in_store(state.store.list_models)
    models = []
    for entry in entries:
        models.append({
            "name": str(entry.name),
            "model": str(entry.name),
            "modified_at": entry.modified_at.isoformat(),
            "size": entry.size,
            "digest": entry.digest,
            "details": entry.details,  # from the small config blob: listing never parses GGUFs
        })
    return web.json_response({"models": models})


@routes.post("/api/show")
async def show(request: web.Request) -> web.Response:
    from llmhost.registry.modelfile import render_modelfile

    body = await read_json(request)
    verbose = field_of(body, "verbose", bool, False)
    state = state_of(request)
    record = await state.in_store(state.store.load, model_field(body))
    model_info = await state.in_store(record.info.model_info, verbose)  # verbose re-reads the vocabulary
    projector_info = await state.in_store(_projector_info, record.projector_path, verbose)
    shown: JsonObject = {
        "modelfile": render_modelfile(record),
        "parameters": _parameters_text(record.parameters),
        "template": record.chat_template or "",  # as stored: the template layer, else the GGUF's
        "system": record.system or "",
        "license": "\n".join(record.license or []),
        "details": record.details(),
        "model_info": model_info,
        "capabilities": capabilities(record),
        "modified_at": record.modified_at.isoformat(),
    }
    if projector_info is not None:  # Ollama's field: the projector's GGUF metadata, as model_info
        shown["projector_info"] = projector_info
    if record.messages:
        shown["messages"] = [{"role": m["role"], "content": m["content"]} for m in record.messages]
    return web.json_response(shown)


def _projector_info(path: Path | None, verbose: bool) -> JsonObject | None:
    return read_gguf_info(path).model_info(verbose) if path is not None else None


def _parameters_text(parameters: dict[str, Any]) -> str:
    """Ollama's ``parameters`` text: ``name`` padded to 30, then the value as Go's ``%#v`` prints it."""
    lines = []
    for name, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{name:<30} {_go_sharp_v(item)}")
    return "\n".join(lines)


def _go_sharp_v(value: object) -> str:
    if isinstance(value, str):
        return go_quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return format_float(float(value)) if isinstance(value, (int, float)) else str(value)


@routes.post("/api/copy")
async def copy(request: web.Request) -> web.Response:
    body = await read_json(request)
    source = field_of(body, "source", str)
    destination = field_of(body, "destination", str)
    if not source or not destination:
        raise BadRequest("source and destination are required")
    state = state_of(request)
    await state.in_store(state.store.copy, source, destination)
    return web.Response(status=200)


@routes.delete("/api/delete")
async def delete(request: web.Request) -> web.Response:
    body = await read_json(request)
    state = state_of(request)
    removed = await state.in_store(state.store.delete, model_field(body))
    for digest in removed:  # a runner of a GGUF no model uses any more is stopped (copies keep theirs)
        await state.residency.expire(digest)
    return web.Response(status=200)


@routes.route("HEAD", "/api/blobs/{digest}")
async def blob_exists(request: web.Request) -> web.Response:
    store = state_of(request).store
    digest = request.match_info["digest"]
    store.blob_path(digest)  # validates: 400 on a malformed digest
    if not store.has_blob(digest):
        raise NotFound(f"blob {digest} not found")
    return web.Response(status=200)


@routes.post("/api/blobs/{digest}")
async def blob_upload(request: web.Request) -> web.Response:
    """Receive a blob: read on the loop (bounded in size and idle time), written on the upload threads."""
    state = state_of(request)
    store = state.store
    digest = request.match_info["digest"]
    store.blob_path(digest)
    if store.has_blob(digest):
        return web.Response(status=200)  # the unread body is drained (briefly) or the connection closed
    limits = BodyLimits(state.settings.max_upload, state.settings.body_idle_timeout, "LLMHOST_MAX_UPLOAD")
    limits.check_declared(request)
    if request.content_length:
        store.check_space(request.content_length, f"blob {digest}")
    writer = await asyncio.get_running_loop().run_in_executor(state.upload_io, store.blob_writer, digest)
    await receive_blob(request, writer, state.upload_io, limits)
    return web.Response(status=201)


async def _progress_events(work: Callable[[Callable[[JsonObject], None]], object],
                           executor: Executor) -> AsyncIterator[JsonObject]:
    """Run ``work(progress)`` on ``executor`` and yield the progress events it reports."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[JsonObject | None] = asyncio.Queue()  # None: the work has ended

    def progress(event: JsonObject) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, event)

    task = loop.run_in_executor(executor, work, progress)
    task.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
    while (event := await queue.get()) is not None:
        yield event
    task.result()  # re-raise the work's error, after its progress has been sent


@routes.post("/api/create")
async def create(request: web.Request) -> web.StreamResponse:
    from llmhost.registry.create import create_model
    from llmhost.registry.modelfile import DRAFT_UNSUPPORTED

    body = await read_json(request)
    state = state_of(request)
    name = ModelName.parse(model_field(body))
    stream = field_of(body, "stream", bool, True)
    files = field_of(body, "files", dict)
    if body.get("quantize"):
        raise BadRequest("quantize is not supported: create from an already quantized GGUF file")
    if body.get("adapters"):
        raise BadRequest("adapters are not supported yet")
    if body.get("draft_files") or body.get("draft_quantize"):
        raise BadRequest(DRAFT_UNSUPPORTED)
    kwargs = dict(
        from_=field_of(body, "from", str),
        files=files,
        template=field_of(body, "template", str),
        system=field_of(body, "system", str),
        license=_license(body.get("license")),
        parameters=_create_parameters(body.get("parameters")),
        messages=field_of(body, "messages", list),
    )
    if not kwargs["from_"] and not files:
        raise BadRequest("neither 'from' nor 'files' was specified")
    events = _progress_events(lambda progress: create_model(state.store, name, progress=progress, **kwargs),
                              state.store_io)
    return await stream_ndjson(request, events, stream)


def _license(value: object) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise BadRequest('invalid value for "license": expected a string or an array of strings')


def _create_parameters(value: object) -> JsonObject | None:
    from llmhost.api.options import validate_options

    if value is None:
        return None
    return validate_options(value)
