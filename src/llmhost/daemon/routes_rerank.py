"""Rerank: ``/api/rerank`` and ``/v1/rerank``, in llama-server's (and Jina's, Cohere's) request shape.

``{model, query, documents: [str], top_n, return_documents}`` → results sorted by
``relevance_score``, best first, each with the document's ``index`` (and ``document: {"text"}`` when
asked). The runner scores every (query, document) pair with the model's classifier head, all pairs
packed into as few decodes as fit; ordering and ``top_n`` happen here, where the documents are.
Errors on ``/v1/rerank`` come in OpenAI's shape (``dialects``: the path picks it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from llmhost.api.types import JsonObject, RerankRequest
from llmhost.daemon.http import read_json
from llmhost.daemon.inference import NS, lease_for
from llmhost.daemon.state import DaemonState, state_of
from llmhost.errors import BadRequest, RunnerError
from llmhost.registry.capabilities import Capability, capabilities, go_quote

routes = web.RouteTableDef()


@dataclass(frozen=True)
class Ranking:
    """The documents of one request, ranked."""

    model: str  # the model's name as stored
    results: list[JsonObject]  # best first: index, relevance_score (and document)
    prompt_eval_count: int  # tokens of all the pairs the runner evaluated
    load_duration: float  # seconds spent loading the model for this request


@routes.post("/api/rerank")
async def rerank_native(request: web.Request) -> web.Response:
    started = time.monotonic()
    ranking = await rerank(state_of(request), RerankRequest.from_json(await read_json(request)))
    return web.json_response({
        "model": ranking.model,
        "results": ranking.results,
        "total_duration": int((time.monotonic() - started) * NS),
        "load_duration": int(ranking.load_duration * NS),
        "prompt_eval_count": ranking.prompt_eval_count,
    })


@routes.post("/v1/rerank")
async def rerank_v1(request: web.Request) -> web.Response:
    ranking = await rerank(state_of(request), RerankRequest.from_json(await read_json(request)))
    tokens = ranking.prompt_eval_count
    return web.json_response({"model": ranking.model, "object": "list", "results": ranking.results,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def rerank(state: DaemonState, req: RerankRequest) -> Ranking:
    """Score the documents on the model's runner; a model that is not a reranker is refused before
    anything is loaded."""
    record = await state.in_store(state.store.load, req.model)
    if Capability.RERANK.value not in capabilities(record):
        raise BadRequest(f"{go_quote(req.model)} does not support rerank")
    lease, _ = await lease_for(state, req, record)
    with lease:
        result = await lease.runner.rerank({"query": req.query, "documents": list(req.documents),
                                            "truncate": req.truncate})
    scores = result.get("scores")
    if not isinstance(scores, list) or len(scores) != len(req.documents):
        raise RunnerError("the model runner answered a rerank with the wrong number of scores")
    return Ranking(str(record.name), ranked(req, scores), int(result.get("prompt_eval_count", 0)),
                   lease.load_duration)


def ranked(req: RerankRequest, scores: list[float]) -> list[JsonObject]:
    """Results by score, best first (equal scores keep the documents' order), the best ``top_n``."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:req.top_n]
    results = []
    for i in order:
        result: JsonObject = {"index": i, "relevance_score": scores[i]}
        if req.return_documents:
            result["document"] = {"text": req.documents[i]}
        results.append(result)
    return results
