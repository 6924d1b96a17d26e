"""The runner's HTTP surface (docs/runner-protocol.md): /health, /completion, /tokenize, /embed.

Handlers are thin: validate → prepare a Sequence (in a worker thread: rendering, tokenizing and
grammar compilation can take milliseconds) → submit to the engine → stream NDJSON lines from the
sequence's asyncio queue. A client that disconnects cancels its handler (the app runs with
``handler_cancellation``), and the handler's ``finally`` cancels the sequence.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any, Callable

from aiohttp import web

from llmhost.engine.embeddings import Embedder
from llmhost.engine.engine import Engine
from llmhost.engine.prompt import CompletionRequest, PromptBuilder
from llmhost.engine.sequence import Failed, Finished, FinishReason, Output, Sequence, TextChunk
from llmhost.errors import BadRequest

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"


def resident_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class OutputStream:
    """The asyncio end of a sequence's sink: the engine thread calls it, the handler awaits ``get``."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._queue: asyncio.Queue[Output] = asyncio.Queue()

    def __call__(self, output: Output) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, output)
        except RuntimeError:  # the loop is closed: the request is long gone
            pass

    async def get(self) -> Output:
        return await self._queue.get()


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


class RunnerServer:
    """Routes bound to one engine and model."""

    def __init__(
        self, engine: Engine, builder: PromptBuilder, embedder: Embedder, info: Callable[[], dict[str, Any]]
    ):
        self.engine = engine
        self.builder = builder
        self.embedder = embedder
        self.info = info

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_post("/completion", self.completion)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/embed", self.embed)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", **self.info(), "memory_bytes": resident_bytes()})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            return _error('"content" must be a string', 400)
        # No BOS/EOS added (the count of the text itself); special tokens in the text are parsed.
        tokens = self.builder.model.tokenize(content, add_special=False, parse_special=True)
        return web.json_response({"tokens": tokens.tolist()})

    async def embed(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        inputs = body.get("input") if isinstance(body, dict) else None
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            return _error('"input" must be a string or a list of strings', 400)
        truncate = body.get("truncate", True)
        if not isinstance(truncate, bool):
            return _error('"truncate" must be a boolean', 400)
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self.embedder.embed(inputs, truncate=truncate)
            )
        except BadRequest as e:
            return _error(e.message, 400)
        return web.json_response({"embeddings": result.embeddings, "prompt_eval_count": result.prompt_eval_count})

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        loop = asyncio.get_running_loop()
        stream = OutputStream(loop)
        try:
            req = CompletionRequest.from_json(body)
            seq = await loop.run_in_executor(None, self.builder.sequence, req, stream)
        except BadRequest as e:
            return _error(e.message, 400)
        response = web.StreamResponse(headers={"Content-Type": NDJSON})
        if seq is None:  # nothing to evaluate (empty prompt without BOS)
            await response.prepare(request)
            await response.write(_line(_empty_result().to_json()))
            return response
        return await self._stream(request, response, seq, stream)

    async def _stream(self, request, response: web.StreamResponse, seq: Sequence, stream: OutputStream):
        done = False
        self.engine.submit(seq)
        try:
            await response.prepare(request)
            while not done:
                output = await stream.get()
                if isinstance(output, TextChunk):
                    await response.write(_line({"content": output.text}))
                elif isinstance(output, Finished):
                    await response.write(_line(output.to_json()))
                    done = True
                elif isinstance(output, Failed):
                    await response.write(_line({"error": output.message}))
                    done = True
        finally:
            if not done:  # client went away (handler cancelled or write failed)
                self.engine.cancel(seq)
        return response


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error("the request body is not valid JSON", 400)


def _empty_result() -> Finished:
    return Finished(FinishReason.STOP, 0, 0, 0, 0, 0)
