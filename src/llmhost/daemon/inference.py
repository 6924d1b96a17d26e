"""The inference path shared by the native and the OpenAI routes: model → lease → runner lines."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Protocol

from llmhost.api.options import split_options
from llmhost.api.responses import Metrics
from llmhost.api.runner_protocol import CompletionBody
from llmhost.api.types import ChatRequest, EmbedRequest, GenerateRequest, JsonObject
from llmhost.daemon.metrics import CompletionMeter
from llmhost.daemon.residency import Lease, ModelIdentity, Residency
from llmhost.daemon.runner_client import LoadSpec
from llmhost.daemon.runner_request import effective_options, runner_body
from llmhost.daemon.state import DaemonState
from llmhost.errors import BadRequest, LlmhostError, RunnerError
from llmhost.registry.capabilities import capabilities
from llmhost.registry.record import ModelRecord

NS = 1_000_000_000


class LeaseRequest(Protocol):
    """What a request that holds a runner says about it: load options (among ``options``) and keep_alive."""

    @property
    def options(self) -> JsonObject: ...

    @property
    def keep_alive(self) -> float | None: ...


@dataclass(frozen=True)
class LeaseTerms:
    """What a request needs of a runner, settled (and so checked) before anything is held."""

    spec: LoadSpec
    model: ModelIdentity  # name, digest and details for /api/ps
    keep_alive: float
    runtime: JsonObject  # the request's sampling options, for the runner's body

    @classmethod
    def of(cls, state: DaemonState, request: LeaseRequest, record: ModelRecord) -> LeaseTerms:
        runtime, load = split_options(effective_options(record.parameters, request.options))
        keep_alive = state.settings.keep_alive if request.keep_alive is None else request.keep_alive
        model = ModelIdentity(str(record.name), record.digest, record.details())
        return cls(state.load_spec(record, load), model, keep_alive, runtime)

    async def take(self, residency: Residency) -> Lease:
        return await residency.acquire(self.spec, self.model, self.keep_alive)


async def lease_for(state: DaemonState, request: LeaseRequest, record: ModelRecord) -> tuple[Lease, JsonObject]:
    """Hold a runner for ``record`` with the request's load options; also return its runtime options."""
    terms = LeaseTerms.of(state, request, record)
    return await terms.take(state.residency), terms.runtime


@dataclass
class Completion:
    """A started completion: the model's display name, timing, the runner's lines, and its lease.

    It holds the runner until it is closed, however the request ends (an error in the route or while
    building the response, a client gone before the first line, lines never read): use
    ``async with completion:`` around everything after ``start_completion``. Closing what
    ``deltas(completion)`` returns closes the completion too.
    """

    model: str
    started: float
    lease: Lease
    lines: AsyncGenerator[JsonObject, None]

    async def aclose(self) -> None:
        """Stop the runner's stream (if it started) and release the lease; safe to call again."""
        try:
            await self.lines.aclose()
        finally:
            self.lease.release()

    async def __aenter__(self) -> Completion:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def start_completion(state: DaemonState, request: GenerateRequest | ChatRequest,
                           record: ModelRecord | None = None) -> Completion:
    """Load (or reuse) the model and start streaming; errors before the first line raise here.

    The request is checked and the runner's body built before the runner is taken, so nothing that
    can be refused holds a lease; the caller owns the returned Completion and must close it.
    """
    started = time.monotonic()
    if record is None:
        record = await state.in_store(state.store.load, request.model)
    think = resolve_think(record, request)
    terms = LeaseTerms.of(state, request, record)
    body = runner_body(record, request, terms.runtime, think)
    lease = await terms.take(state.residency)
    meter = state.metrics.completion(str(record.name), started)
    return Completion(str(record.name), started, lease, _runner_lines(lease, body, meter))


def resolve_think(record: ModelRecord, request: GenerateRequest | ChatRequest) -> bool | str | None:
    """Check the model can serve the request (Ollama's 400s otherwise) and settle ``think``.

    As in Ollama, thinking is on by default for a model that can think; ``False`` switches it off
    through the template's own switch. None: the model has no thinking to switch.
    """
    available = capabilities(record)
    quoted = json.dumps(request.model)  # Go's %q of the name as the client sent it
    if request.think not in (None, False) and "thinking" not in available:
        raise BadRequest(f"{quoted} does not support thinking")
    if "completion" not in available:
        raise BadRequest(f"{quoted} does not support {'chat' if isinstance(request, ChatRequest) else 'generate'}")
    missing = [need for need in request.needs() if need not in available]
    if missing:  # Ollama names the model in full here, and joins several with newlines
        name = record.name
        raise BadRequest(f"{name.host}/{name.namespace}/{name.model}:{name.tag} does not support "
                         + "\n".join(missing))
    if "thinking" not in available:
        return None
    return True if request.think is None else request.think


async def _runner_lines(lease: Lease, body: CompletionBody, meter: CompletionMeter) -> AsyncGenerator[JsonObject, None]:
    """The runner's ``{"content"}`` lines, then its final line; an error line raises RunnerError.

    ``meter`` sees every line as the runner sent it (the final one before ``metrics`` adds the
    cached tokens to ``prompt_eval_count``).
    """
    try:
        async with contextlib.aclosing(lease.runner.completion(body)) as lines:
            async for line in lines:
                meter.line(line)
                if "error" in line:
                    raise RunnerError(line["error"])
                yield line
                if line.get("done"):
                    return
    except LlmhostError:  # an error line, or the runner failed or died
        meter.failed()
        raise
    finally:
        lease.release()


@dataclass(frozen=True)
class Delta:
    """What one step of a completion adds: answer text, thinking, whole tool calls, token logprobs."""

    content: str = ""
    thinking: str = ""
    tool_calls: tuple[JsonObject, ...] = ()  # native shape, each with its ``id`` and ``function.index``
    logprobs: tuple[JsonObject, ...] = ()


def deltas(completion: Completion) -> Deltas:
    """The runner's lines as Deltas, then its final line (a dict with ``done``); see ``Deltas``."""
    return Deltas(completion)


class Deltas:
    """The one reader of a completion's lines; closing it (``aclosing(deltas(c))``) closes ``c``.

    A token's logprobs arrive before its text and ride on the next delta; tool calls get Ollama's
    ``call_…`` ids and their index among this answer's calls.
    """

    def __init__(self, completion: Completion):
        self._completion = completion
        self._items = _deltas(completion.lines)

    def __aiter__(self) -> Deltas:
        return self

    def __anext__(self) -> Awaitable[Delta | JsonObject]:
        return self._items.__anext__()

    async def aclose(self) -> None:
        try:
            await self._items.aclose()
        finally:
            await self._completion.aclose()


async def _deltas(lines: AsyncIterator[JsonObject]) -> AsyncGenerator[Delta | JsonObject, None]:
    pending: list[JsonObject] = []
    n_calls = 0
    async for line in lines:
        if line.get("done"):
            if pending:
                yield Delta(logprobs=tuple(pending))
            yield line
            return
        if "logprobs" in line:
            pending.extend(line["logprobs"])
            continue
        calls = tuple(_numbered_call(call, n_calls + i) for i, call in enumerate(line.get("tool_calls") or ()))
        n_calls += len(calls)
        yield Delta(line.get("content", ""), line.get("thinking", ""), calls, tuple(pending))
        pending = []


def _numbered_call(call: JsonObject, index: int) -> JsonObject:
    function = call.get("function") or {}
    return {"id": tool_call_id(), "function": {"index": index, "name": function.get("name", ""),
                                               "arguments": function.get("arguments") or {}}}


def tool_call_id() -> str:
    """An id in Ollama's form: ``call_`` and 8 lowercase letters or digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


async def collect(completion: Completion) -> tuple[list[Delta], JsonObject]:
    """A whole (non-streamed) answer: every delta of ``completion``, and the runner's final line ({}
    if none came). The deltas are closed however the reading ends."""
    collected: list[Delta] = []
    final: JsonObject = {}
    async with contextlib.aclosing(deltas(completion)) as items:
        async for item in items:
            if isinstance(item, Delta):
                collected.append(item)
            else:
                final = item
    return collected, final


def metrics(final: JsonObject, completion: Completion) -> Metrics:
    """Ollama's final-chunk metrics (ns), from the runner's final line.

    ``final`` is the runner's ``FinalLine`` as parsed JSON. ``prompt_eval_count`` is the whole prompt, as Ollama counts it, cached tokens included (clients
    report it as prompt usage); ``prompt_cached_count`` (our extension) says how many of those the KV
    cache supplied, and ``prompt_eval_duration`` is the time spent on the rest.
    """
    return {
        "total_duration": int((time.monotonic() - completion.started) * NS),
        "load_duration": int(completion.lease.load_duration * NS),
        "prompt_eval_count": final.get("prompt_eval_count", 0) + final.get("prompt_cached_count", 0),
        "prompt_eval_duration": final.get("prompt_eval_duration", 0),
        "prompt_cached_count": final.get("prompt_cached_count", 0),
        "eval_count": final.get("eval_count", 0),
        "eval_duration": final.get("eval_duration", 0),
    }


async def embed(state: DaemonState, request: EmbedRequest) -> tuple[str, JsonObject, float]:
    """Vectors for the request's inputs: (model name, runner result, load seconds)."""
    record = await state.in_store(state.store.load, request.model)
    lease, _ = await lease_for(state, request, record)
    with lease:
        result = await lease.runner.embed({"input": list(request.inputs), "truncate": request.truncate})
    return str(record.name), result, lease.load_duration
