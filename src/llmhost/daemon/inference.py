"""The inference path shared by the native and the OpenAI routes: model → lease → runner lines."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import AsyncIterator

from llmhost.api.options import split_options
from llmhost.api.types import ChatRequest, EmbedRequest, GenerateRequest
from llmhost.daemon.prompting import effective_options, runner_body
from llmhost.daemon.residency import Lease
from llmhost.daemon.state import DaemonState
from llmhost.errors import RunnerError

NS = 1_000_000_000


async def lease_for(state: DaemonState, request: GenerateRequest | ChatRequest | EmbedRequest, record):
    """Hold a runner for ``record`` with the request's load options; also return its runtime options."""
    options = effective_options(record.parameters, request.options)
    runtime, load = split_options(options)
    spec = state.load_spec(record, load)
    keep_alive = state.settings.keep_alive if request.keep_alive is None else request.keep_alive
    info = {"digest": record.digest, "details": record.details(), "model": str(record.name)}
    lease = await state.residency.acquire(spec, str(record.name), keep_alive, info)
    return lease, runtime


@dataclass
class Completion:
    """A started completion: the model's display name, timing, and the runner's lines."""

    model: str
    started: float
    lease: Lease
    lines: AsyncIterator[dict]


async def start_completion(state: DaemonState, request: GenerateRequest | ChatRequest, record=None) -> Completion:
    """Load (or reuse) the model and start streaming; errors before the first line raise here."""
    started = time.monotonic()
    if record is None:
        record = await asyncio.to_thread(state.store.load, request.model)
    lease, runtime = await lease_for(state, request, record)
    lines = _runner_lines(lease, runner_body(record, request, runtime))
    return Completion(str(record.name), started, lease, lines)


async def _runner_lines(lease: Lease, body: dict) -> AsyncIterator[dict]:
    """The runner's ``{"content"}`` lines, then its final line; an error line raises RunnerError."""
    try:
        async with contextlib.aclosing(lease.runner.completion(body)) as lines:
            async for line in lines:
                if "error" in line:
                    raise RunnerError(line["error"])
                yield line
                if line.get("done"):
                    return
    finally:
        lease.release()


def metrics(final: dict, completion: Completion) -> dict:
    """Ollama's final-chunk metrics (ns), from the runner's final line."""
    return {
        "total_duration": int((time.monotonic() - completion.started) * NS),
        "load_duration": int(completion.lease.load_duration * NS),
        "prompt_eval_count": final.get("prompt_eval_count", 0),
        "prompt_eval_duration": final.get("prompt_eval_duration", 0),
        "prompt_cached_count": final.get("prompt_cached_count", 0),
        "eval_count": final.get("eval_count", 0),
        "eval_duration": final.get("eval_duration", 0),
    }


async def embed(state: DaemonState, request: EmbedRequest) -> tuple[str, dict, float]:
    """Vectors for the request's inputs: (model name, runner result, load seconds)."""
    record = await asyncio.to_thread(state.store.load, request.model)
    lease, _ = await lease_for(state, request, record)
    try:
        result = await lease.runner.embed({"input": list(request.inputs), "truncate": request.truncate})
    finally:
        lease.release()
    return str(record.name), result, lease.load_duration
