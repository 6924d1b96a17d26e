"""The runner's HTTP surface (docs/runner-protocol.md): /health, /completion, /tokenize, /detokenize, /embed,
/rerank.

Handlers are thin: validate → prepare a Sequence (in a worker thread: rendering, tokenizing and
grammar compilation can take milliseconds) → submit to the engine → stream NDJSON lines, the first
through the event loop and the rest written by the engine thread itself (``runner_stream``). A client
that disconnects cancels its handler (the app runs with ``handler_cancellation``), and the handler's
``finally`` cancels the sequence; one that goes while its request is being prepared stops the
template render under way, and a preparation that outlasts ``PREPARE_TIMEOUT`` is given up (its
sequence, if one comes, is freed). While a request is being prepared the engine knows it is coming
(``Engine.expect``), so that an idle engine starts a burst of requests in one step.

Every error before a response starts is a JSON ``{"error"}`` body (the daemon reads nothing else),
with status 400 for a request that is at fault: not JSON, text that is not Unicode (a lone
surrogate escape such as ``"\\ud800"``), anything ``BadRequest``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from llmhost.engine.embeddings import Embedder
from llmhost.engine.engine import Engine
from llmhost.engine.prompt import MAX_CHARS_PER_TOKEN, CompletionRequest, PromptBuilder
from llmhost.engine.runner_stream import Mailbox, OutputStream, encode, line
from llmhost.engine.sequence import Finished, FinishReason, Sequence
from llmhost.errors import BadRequest

log = logging.getLogger(__name__)

NDJSON = "application/x-ndjson"

# The daemon takes JSON bodies of up to 64 MiB and forwards them re-encoded with ASCII escapes
# (a 2-byte character becomes a 6-byte \uXXXX: 3 times the bytes), with the template and options
# it adds: whatever it accepted fits here.
MAX_BODY = 3 * 64 * 1024**2 + 16 * 1024**2
# Rendering gives up by itself after its time limit (2 s by default) and tokenizing is bounded by
# the context; this only keeps a handler from waiting forever on something neither bounds.
PREPARE_TIMEOUT = 60.0
# Request key: the response has started, errors go in the stream (a RequestKey from aiohttp 3.14 on).
_STREAMING = web.RequestKey("llmhost.streaming", bool) if hasattr(web, "RequestKey") else "llmhost.streaming"
# Surrogates can only come from \uD800-\uDFFF escapes (paired ones decode to one character).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def resident_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


class RunnerServer:
    """Routes bound to one engine and model."""

    def __init__(
        self,
        engine: Engine,
        builder: PromptBuilder,
        embedder: Embedder,
        info: Callable[[], dict[str, Any]],
        prepare_timeout: float = PREPARE_TIMEOUT,
    ):
        self.engine = engine
        self.builder = builder
        self.embedder = embedder
        self.info = info
        self.prepare_timeout = prepare_timeout
        self._mailbox: Mailbox | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[_json_errors])
        app.router.add_get("/health", self.health)
        app.router.add_post("/completion", self.completion)
        app.router.add_post("/tokenize", self.tokenize)
        app.router.add_post("/detokenize", self.detokenize)
        app.router.add_post("/embed", self.embed)
        app.router.add_post("/rerank", self.rerank)
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
        limit = self.builder.ctx_size * MAX_CHARS_PER_TOKEN  # more than any prompt is tokenized
        if len(content) > limit:
            return _error(f"the text is {len(content)} characters, more than the limit of {limit}", 400)
        # No BOS/EOS added (the count of the text itself); special tokens in the text are parsed.
        tokens = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.builder.model.tokenize(content, add_special=False, parse_special=True))
        return web.json_response({"tokens": tokens.tolist()})

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
            return _error('"tokens" must be a list of token ids', 400)
        pieces = body.get("pieces", False)
        if not isinstance(pieces, bool):
            return _error('"pieces" must be a boolean', 400)
        limit = self.builder.ctx_size * MAX_CHARS_PER_TOKEN
        if len(tokens) > limit:
            return _error(f"{len(tokens)} tokens are more than the limit of {limit}", 400)
        n_vocab = self.builder.model.n_vocab
        outside = next((t for t in tokens if not 0 <= t < n_vocab), None)
        if outside is not None:
            return _error(f"token id {outside} is not in the vocabulary (0 to {n_vocab - 1})", 400)
        result = await asyncio.get_running_loop().run_in_executor(None, self._detokenize, tokens, pieces)
        return web.json_response(result)

    def _detokenize(self, tokens: list[int], pieces: bool) -> dict[str, Any]:
        # Control tokens as their text, so that what /tokenize parsed comes back as it was.
        parts = [self.builder.model.special_piece(t) for t in tokens]
        result: dict[str, Any] = {"content": b"".join(parts).decode("utf-8", errors="replace")}
        if pieces:  # as llama-server: a piece that is not whole UTF-8 is given as its bytes
            result["pieces"] = [_piece_json(part) for part in parts]
        return result

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
            result = await asyncio.get_running_loop().run_in_executor(None, self._embed, inputs, truncate)
        except BadRequest as e:
            return _error(e.message, 400)
        return web.json_response({"embeddings": result.embeddings, "prompt_eval_count": result.prompt_eval_count})

    def _embed(self, inputs: list[str], truncate: bool):
        # Of a long input only the head that a cut at the end keeps is worth tokenizing.
        return self.embedder.embed([self.builder.head_that_fits(text) for text in inputs], truncate=truncate)

    async def rerank(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        body = body if isinstance(body, dict) else {}
        query, documents, truncate = body.get("query"), body.get("documents"), body.get("truncate", True)
        if not isinstance(query, str):
            return _error('"query" must be a string', 400)
        if not isinstance(documents, list) or not documents or not all(isinstance(d, str) for d in documents):
            return _error('"documents" must be a non-empty list of strings', 400)
        if not isinstance(truncate, bool):
            return _error('"truncate" must be a boolean', 400)
        cancel = threading.Event()  # set when this handler ends, also when its client goes away
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                None, self._rerank, query, documents, truncate, cancel)
        except BadRequest as e:
            return _error(e.message, 400)
        finally:
            cancel.set()
        return web.json_response({"scores": result.scores, "prompt_eval_count": result.prompt_eval_count})

    def _rerank(self, query: str, documents: list[str], truncate: bool, cancel: threading.Event):
        fit = self.builder.head_that_fits  # a pair never holds more than the context: tokenize no more
        return self.embedder.rerank(fit(query), [fit(d) for d in documents], truncate=truncate, cancel=cancel)

    async def completion(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if isinstance(body, web.Response):
            return body
        loop = asyncio.get_running_loop()
        if self._mailbox is None:
            self._mailbox = Mailbox(loop)
        stream = OutputStream(self._mailbox)
        settle = self.engine.expect()  # an idle engine waits a moment for a request under way
        try:
            try:
                seq = await self._prepare(CompletionRequest.from_json(body), stream)
            except BadRequest as e:
                return _error(e.message, 400)
            except asyncio.TimeoutError:
                return _error(f"preparing the request took longer than {self.prepare_timeout:g} s", 503)
            response = web.StreamResponse(headers={"Content-Type": NDJSON})
            if seq is None:  # nothing to evaluate (empty prompt without BOS)
                await response.prepare(request)
                await response.write(line(_empty_result().to_json()))
                return response
            return await self._stream(request, response, seq, stream, settle)
        finally:
            settle()

    async def _prepare(self, req: CompletionRequest, stream: OutputStream) -> Sequence | None:
        """The request's Sequence, built in a worker thread; a handler that is cancelled (its client
        went away) or times out stops the render and frees a sequence that comes too late."""
        cancel = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(None, self.builder.sequence, req, stream, cancel)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.prepare_timeout)
        except BaseException:
            cancel.set()
            future.add_done_callback(_close_abandoned)
            raise

    async def _stream(self, request, response: web.StreamResponse, seq: Sequence, stream: OutputStream,
                      settle: Callable[[], None]):
        done = False
        self.engine.submit(seq)
        settle()  # after the submit: an engine that stops waiting finds the sequence in its inbox
        request[_STREAMING] = True
        try:
            await response.prepare(request)
            while not done:
                handback, outputs = await stream.take()
                if handback is not None:  # the engine thread wrote the outputs before these itself
                    transport = request.transport
                    if handback.broken or transport is None:
                        raise ConnectionResetError("the daemon's connection failed")
                    if handback.rest:  # a chunk's tail, already framed
                        transport.write(handback.rest)
                    done = handback.done
                if outputs:
                    # Whatever arrived while the last write was under way goes out in one write.
                    payload, done = encode(outputs)
                    await response.write(payload)
                if not done and request.transport is not None:
                    stream.go_direct(request.transport)
        finally:
            stream.stop_direct()
            if not done:  # client went away (handler cancelled or write failed)
                self.engine.cancel(seq)
        return response


def _piece_json(piece: bytes) -> str | list[int]:
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return list(piece)


def _close_abandoned(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is None and future.result() is not None:
        future.result().close()


@web.middleware
async def _json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Errors as JSON bodies rather than aiohttp's text/plain, until a response has started."""
    try:
        return await handler(request)
    except ConnectionError:
        raise
    except Exception as e:
        if request.get(_STREAMING) or (isinstance(e, web.HTTPException) and e.status < 400):
            raise
        if isinstance(e, web.HTTPException):
            return _error(e.reason, e.status)
        if isinstance(e, BadRequest):
            return _error(e.message, 400)
        log.exception("%s %s failed", request.method, request.path)
        return _error(f"internal error in the model runner: {type(e).__name__}: {e}", 500)


async def _json_body(request: web.Request) -> Any:
    try:
        text = await request.text()
    except web.HTTPRequestEntityTooLarge:
        return _error(f"the request body is larger than the runner's limit of {MAX_BODY >> 20} MiB", 413)
    except UnicodeDecodeError:
        return _error("the request body is not valid JSON", 400)
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return _error("the request body is not valid JSON", 400)
    except RecursionError:
        return _error("the request body is nested too deeply", 400)
    if _SURROGATE_ESCAPE.search(text) and _has_surrogate(body):
        return _error("the request has text that is not Unicode: a lone surrogate escape (\\ud800 to \\udfff)", 400)
    return body


def _has_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _empty_result() -> Finished:
    return Finished(FinishReason.STOP, 0, 0, 0, 0, 0)
