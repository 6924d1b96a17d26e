"""Inference routes: generate, chat, embed, ps."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import AsyncIterator

from aiohttp import web

from llmhost.api.options import split_options
from llmhost.api.types import ChatRequest, EmbedRequest, GenerateRequest
from llmhost.daemon.http import format_time, now_rfc3339, read_json, stream_ndjson
from llmhost.daemon.prompting import effective_options, load_options, runner_body
from llmhost.daemon.state import DaemonState, state_of

routes = web.RouteTableDef()

NS = 1_000_000_000


def _keep_alive(state: DaemonState, requested: float | None) -> float:
    return state.settings.keep_alive if requested is None else requested


async def _lease_for(state: DaemonState, request: GenerateRequest | ChatRequest | EmbedRequest, record):
    options = effective_options(record.parameters, request.options)
    runtime, load = split_options(options)
    spec = state.load_spec(record, load_options(load, {}, {}))
    info = {"digest": record.digest, "details": record.details(), "model": str(record.name)}
    lease = await state.residency.acquire(spec, str(record.name), _keep_alive(state, request.keep_alive), info)
    return lease, runtime


@routes.post("/api/generate")
async def generate(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    req = GenerateRequest.from_json(body)
    empty = not req.prompt
    return await _infer(request, req, empty, lambda text: {"response": text})


@routes.post("/api/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    req = ChatRequest.from_json(body)
    empty = not req.messages
    return await _infer(request, req, empty,
                        lambda text: {"message": {"role": "assistant", "content": text}})


async def _infer(request: web.Request, req, empty: bool, wrap) -> web.StreamResponse:
    state = state_of(request)
    record = await asyncio.to_thread(state.store.load, req.model)
    started = time.monotonic()
    model = str(record.name)
    if empty:
        return web.json_response(await _load_or_unload(state, req, record, started, wrap))
    lease, runtime = await _lease_for(state, req, record)
    events = _completion_events(lease, runner_body(record, req, runtime), model, started, wrap)
    return await stream_ndjson(request, events, req.stream, merge=_merge_chunks)


async def _load_or_unload(state: DaemonState, req, record, started: float, wrap) -> dict:
    """An empty prompt loads the model; with keep_alive 0 it unloads it (``llm stop``)."""
    if req.keep_alive == 0:
        await state.residency.expire(record.runner_key)
        reason = "unload"
    else:
        lease, _ = await _lease_for(state, req, record)
        lease.release()
        reason = "load"
    return {"model": str(record.name), "created_at": now_rfc3339(), **wrap(""), "done": True,
            "done_reason": reason, **({"total_duration": int((time.monotonic() - started) * NS)}
                                      if reason == "load" else {})}


async def _completion_events(lease, body: dict, model: str, started: float, wrap) -> AsyncIterator[dict]:
    try:
        async with contextlib.aclosing(lease.runner.completion(body)) as lines:
            async for line in lines:
                if "error" in line:
                    from llmhost.errors import RunnerError

                    raise RunnerError(line["error"])
                if line.get("done"):
                    yield _final_chunk(line, model, started, lease.load_duration, wrap)
                    return
                yield {"model": model, "created_at": now_rfc3339(), **wrap(line.get("content", "")),
                       "done": False}
    finally:
        lease.release()


def _final_chunk(line: dict, model: str, started: float, load_duration: float, wrap) -> dict:
    return {
        "model": model,
        "created_at": now_rfc3339(),
        **wrap(""),
        "done": True,
        "done_reason": line.get("done_reason", "stop"),
        "total_duration": int((time.monotonic() - started) * NS),
        "load_duration": int(load_duration * NS),
        "prompt_eval_count": line.get("prompt_eval_count", 0),
        "prompt_eval_duration": line.get("prompt_eval_duration", 0),
        "prompt_cached_count": line.get("prompt_cached_count", 0),
        "eval_count": line.get("eval_count", 0),
        "eval_duration": line.get("eval_duration", 0),
    }


def _merge_chunks(chunks: list[dict]) -> dict:
    """``stream: false``: the final chunk carrying the whole text."""
    final = dict(chunks[-1])
    text = "".join(c.get("response", "") or c.get("message", {}).get("content", "") for c in chunks)
    if "message" in final:
        final["message"] = {"role": "assistant", "content": text}
    else:
        final["response"] = text
    return final


@routes.post("/api/embed")
async def embed(request: web.Request) -> web.Response:
    return await _embed(request, legacy=False)


@routes.post("/api/embeddings")
async def embeddings(request: web.Request) -> web.Response:
    return await _embed(request, legacy=True)


async def _embed(request: web.Request, legacy: bool) -> web.Response:
    state = state_of(request)
    req = EmbedRequest.from_json(await read_json(request), legacy=legacy)
    record = await asyncio.to_thread(state.store.load, req.model)
    started = time.monotonic()
    lease, _ = await _lease_for(state, req, record)
    try:
        result = await lease.runner.embed({"input": list(req.inputs), "truncate": req.truncate})
    finally:
        lease.release()
    vectors = [_cut(v, req.dimensions) for v in result["embeddings"]]
    if legacy:
        return web.json_response({"embedding": vectors[0] if vectors else []})
    return web.json_response({
        "model": str(record.name),
        "embeddings": vectors,
        "total_duration": int((time.monotonic() - started) * NS),
        "load_duration": int(lease.load_duration * NS),
        "prompt_eval_count": result.get("prompt_eval_count", 0),
    })


def _cut(vector: list[float], dimensions: int | None) -> list[float]:
    if not dimensions or dimensions >= len(vector):
        return vector
    vector = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


@routes.get("/api/ps")
async def ps(request: web.Request) -> web.Response:
    residency = state_of(request).residency
    models = []
    for resident in residency.residents():
        expires = residency.expires_wall(resident)
        models.append({
            "name": resident.info.get("model", resident.name),
            "model": resident.info.get("model", resident.name),
            "size": resident.size,
            "size_vram": 0,
            "digest": resident.info.get("digest", ""),
            "details": resident.info.get("details", {}),
            "expires_at": format_time(expires) if expires is not None else "2318-08-16T00:00:00Z",
            "context_length": resident.spec.num_ctx,
        })
    return web.json_response({"models": models})
