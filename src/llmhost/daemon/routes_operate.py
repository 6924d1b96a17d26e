"""Routes for operating the daemon: /metrics, /health, and tokenize/detokenize (llmhost extensions)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import generate_latest

from llmhost import __version__
from llmhost.api.types import DetokenizeRequest, JsonObject, TokenizeRequest
from llmhost.daemon.http import read_json
from llmhost.daemon.inference import lease_for
from llmhost.daemon.metrics import refresh_health
from llmhost.daemon.runner_client import Runner
from llmhost.daemon.state import state_of

routes = web.RouteTableDef()

# The classic text format, which every Prometheus reads (our names need none of 1.0.0's escaping).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus' text format; runners are asked for their engine's numbers first."""
    state = state_of(request)
    await refresh_health(state.residency.residents())
    return web.Response(body=generate_latest(state.metrics.registry), headers={"Content-Type": METRICS_CONTENT_TYPE})


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    """200 while serving, 503 once shutdown has begun; the daemon's own books only (no runner is asked)."""
    state = state_of(request)
    admissions = state.residency.admissions()
    body = {
        "status": "shutting down" if state.shutting_down else "ok",
        "version": __version__,
        "uptime_seconds": round(time.monotonic() - state.started, 3),
        "models": sorted({r.name for r in state.residency.residents()}),
        "requests_in_flight": sum(a.count for a in admissions),
        "queue_depth": sum(a.waiting for a in admissions),
    }
    return web.json_response(body, status=503 if state.shutting_down else 200)


@routes.post("/api/tokenize")
async def tokenize(request: web.Request) -> web.Response:
    """``{model, content[, pieces]}`` → ``{model, tokens[, pieces]}``, loading the model as generate does."""
    req = TokenizeRequest.from_json(await read_json(request))

    async def work(runner: Runner) -> JsonObject:
        tokens = (await runner.tokenize({"content": req.content}))["tokens"]
        if not req.pieces:
            return {"tokens": tokens}
        return {"tokens": tokens, "pieces": (await runner.detokenize({"tokens": tokens, "pieces": True}))["pieces"]}

    return web.json_response(await _through_runner(request, req, work))


@routes.post("/api/detokenize")
async def detokenize(request: web.Request) -> web.Response:
    """``{model, tokens}`` → ``{model, content}``."""
    req = DetokenizeRequest.from_json(await read_json(request))

    async def work(runner: Runner) -> JsonObject:
        return {"content": (await runner.detokenize({"tokens": list(req.tokens)}))["content"]}

    return web.json_response(await _through_runner(request, req, work))


async def _through_runner(request: web.Request, req: TokenizeRequest | DetokenizeRequest,
                          work: Callable[[Runner], Awaitable[JsonObject]]) -> JsonObject:
    """``{model, **work(runner)}`` with the model's runner held (loaded first if need be)."""
    state = state_of(request)
    record = await state.in_store(state.store.load, req.model)
    lease, _ = await lease_for(state, req, record)
    with lease:
        return {"model": str(record.name), **await work(lease.runner)}
