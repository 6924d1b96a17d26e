"""Ollama's inference routes: generate, chat, embed(dings), ps."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from llmhost.api.responses import ChatFields, ChatMessage, GenerateFields, ProcessModel
from llmhost.api.types import ChatRequest, EmbedRequest, GenerateRequest, JsonObject
from llmhost.daemon.http import format_time, now_rfc3339, read_json, stream_ndjson
from llmhost.daemon.inference import NS, Completion, Delta, deltas, embed, lease_for, metrics, start_completion
from llmhost.daemon.metrics import refresh_health, usage
from llmhost.daemon.residency import ResidentView
from llmhost.daemon.state import DaemonState, state_of

if TYPE_CHECKING:
    from llmhost.registry.record import ModelRecord

Fields = Callable[[Delta], GenerateFields | ChatFields]  # a delta's own fields in a route's chunk (generate's or chat's)

routes = web.RouteTableDef()

FOREVER = "2318-08-16T00:00:00Z"  # what Ollama shows for a model pinned with keep_alive < 0


@routes.post("/api/generate")
async def generate(request: web.Request) -> web.StreamResponse:
    req = GenerateRequest.from_json(await read_json(request))
    return await _infer(request, req, not req.prompt and not req.suffix, _generate_fields)


@routes.post("/api/chat")
async def chat(request: web.Request) -> web.StreamResponse:
    req = ChatRequest.from_json(await read_json(request))
    return await _infer(request, req, not req.messages, _chat_fields)


def _generate_fields(delta: Delta) -> GenerateFields:
    out: GenerateFields = {"response": delta.content}
    if delta.thinking:
        out["thinking"] = delta.thinking
    return out


def _chat_fields(delta: Delta) -> ChatFields:
    message: ChatMessage = {"role": "assistant", "content": delta.content}
    if delta.thinking:
        message["thinking"] = delta.thinking
    if delta.tool_calls:
        message["tool_calls"] = list(delta.tool_calls)
    return {"message": message}


async def _infer(request: web.Request, req: GenerateRequest | ChatRequest, empty: bool,
                 fields: Fields) -> web.StreamResponse:
    state = state_of(request)
    record = await state.in_store(state.store.load, req.model)
    if empty:
        return web.json_response(await _load_or_unload(state, req, record, fields))
    async with (await start_completion(state, req, record) as completion,
                contextlib.aclosing(_chunks(completion, fields)) as chunks):  # closed even if the client left
        return await stream_ndjson(request, chunks, req.stream, merge=_merge_chunks)


async def _load_or_unload(state: DaemonState, req: GenerateRequest | ChatRequest, record: ModelRecord,
                          fields: Fields) -> JsonObject:
    """An empty prompt loads the model; with keep_alive 0 it unloads it (``llm stop``)."""
    started = time.monotonic()
    if req.keep_alive == 0:
        await state.residency.expire(record.runner_key)
        extra: JsonObject = {"done_reason": "unload"}
    else:
        lease, _ = await lease_for(state, req, record)
        lease.release()
        extra = {"done_reason": "load", "total_duration": int((time.monotonic() - started) * NS),
                 "load_duration": int(lease.load_duration * NS)}
    return {"model": str(record.name), "created_at": now_rfc3339(), **fields(Delta()), "done": True, **extra}


async def _chunks(completion: Completion, fields: Fields) -> AsyncGenerator[JsonObject, None]:
    async with contextlib.aclosing(deltas(completion)) as items:
        async for item in items:
            head = {"model": completion.model, "created_at": now_rfc3339()}
            if isinstance(item, Delta):
                chunk = {**head, **fields(item), "done": False}
                if item.logprobs:
                    chunk["logprobs"] = list(item.logprobs)
                yield chunk
                continue
            final = {**head, **fields(Delta()), "done": True, "done_reason": item.get("done_reason", "stop")}
            if "context" in item:
                final["context"] = item["context"]
            yield {**final, **metrics(item, completion)}


def _merge_chunks(chunks: list[JsonObject]) -> JsonObject:
    """``stream: false``: the final chunk carrying the whole answer (text, thinking, calls, logprobs)."""
    final = dict(chunks[-1])
    parts = [c.get("message", c) for c in chunks]
    text = "".join(p.get("response", p.get("content", "")) for p in parts)
    thinking = "".join(p.get("thinking", "") for p in parts)
    calls = [call for p in parts for call in p.get("tool_calls", ())]
    logprobs = [lp for c in chunks for lp in c.get("logprobs", ())]
    if "message" in final:
        final["message"] = _chat_fields(Delta(text, thinking, tuple(calls)))["message"]
    else:
        final.update(_generate_fields(Delta(text, thinking)))
    if logprobs:
        final["logprobs"] = logprobs
    return final


@routes.post("/api/embed")
async def embed_route(request: web.Request) -> web.Response:
    started = time.monotonic()
    req = EmbedRequest.from_json(await read_json(request))
    model, result, load = await embed(state_of(request), req)
    return web.json_response({
        "model": model,
        "embeddings": [cut_dimensions(v, req.dimensions) for v in result["embeddings"]],
        "total_duration": int((time.monotonic() - started) * NS),
        "load_duration": int(load * NS),
        "prompt_eval_count": result.get("prompt_eval_count", 0),
    })


@routes.post("/api/embeddings")
async def embeddings_legacy(request: web.Request) -> web.Response:
    req = EmbedRequest.from_json(await read_json(request), legacy=True)
    _, result, _ = await embed(state_of(request), req)
    return web.json_response({"embedding": result["embeddings"][0] if result["embeddings"] else []})


def cut_dimensions(vector: list[float], dimensions: int | None) -> list[float]:
    """Keep the first ``dimensions`` values and re-normalise (Matryoshka-style truncation)."""
    if not dimensions or dimensions >= len(vector):
        return vector
    vector = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


@routes.get("/api/ps")
async def ps(request: web.Request) -> web.Response:
    residency = state_of(request).residency
    await refresh_health(residency.residents())  # slots and queue as they are now (briefly)
    return web.json_response({"models": [_ps_entry(view) for view in residency.views()]})


def _ps_entry(view: ResidentView) -> ProcessModel:
    use = usage(view)
    entry: ProcessModel = {
        "name": view.name,
        "model": view.name,
        "size": view.size,
        "size_vram": view.size_vram,
        "digest": view.model.digest,
        "details": dict(view.model.details),
        "expires_at": format_time(view.expires_at) if view.expires_at is not None else FOREVER,
        "context_length": view.context_length,
        # llmhost's own:
        "parallel": use["parallel"], "slots_in_use": use["slots_in_use"], "queue_depth": use["queue_depth"],
        "cache_hit_rate": use["cache_hit_rate"],
    }
    if view.rpc:
        entry["rpc"] = [{"server": s.server, "layers": s.layers, "bytes": s.bytes} for s in view.rpc]
    return entry
