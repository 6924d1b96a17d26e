"""A fake llmhost daemon: Ollama-shaped canned answers on a unix socket (and optionally TCP),
recording every request. It runs its own event loop in a thread so sync CLI code can call it.

Run as a script (``python fake_daemon.py SOCKET``) it serves until killed: the autostart test uses that.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MODEL = "tiny:latest"
DIGEST = "sha256:" + "ab12cd34ef56" + "0" * 52


def show_answer(name: str = MODEL) -> dict:
    return {
        "modelfile": f"FROM {name}\nTEMPLATE {{{{ .Prompt }}}}\n",
        "parameters": 'stop                           "<|im_end|>"\ntemperature                    0.7',
        "template": "{{ .Prompt }}",
        "system": "You are tiny.",
        "license": "MIT License\nCopyright (c) tiny\nPermission is hereby granted",
        "details": {"format": "gguf", "family": "llama", "parameter_size": "135M", "quantization_level": "Q4_1"},
        "model_info": {"general.architecture": "llama", "llama.context_length": 8192, "llama.embedding_length": 576},
        "capabilities": ["completion"],
        "modified_at": "2026-01-01T00:00:00.123456789Z",
    }


def tag_entry(name: str = MODEL, size: int = 98_000_000) -> dict:
    return {
        "name": name, "model": name, "modified_at": "2020-01-01T00:00:00.123456789Z", "size": size,
        "digest": DIGEST, "details": show_answer(name)["details"],
    }


def final_metrics(**extra: Any) -> dict:
    return {
        "done": True, "done_reason": "stop", "total_duration": 1_500_000_000, "load_duration": 2_000_000,
        "prompt_eval_count": 10, "prompt_eval_duration": 100_000_000, "eval_count": 20,
        "eval_duration": 400_000_000, **extra,
    }


def _static(answer):
    async def handler(request: web.Request) -> web.Response:
        return answer()

    return handler


@dataclass
class Recorded:
    method: str
    path: str
    body: Any


@dataclass
class FakeDaemon:
    """Canned state; tests change the fields before invoking the CLI."""

    socket_path: str
    models: dict[str, dict] = field(default_factory=lambda: {MODEL: show_answer()})
    loaded: list[dict] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "!"])
    # what a model with the "thinking" capability thinks before answering (unless asked not to)
    thoughts: list[str] = field(default_factory=lambda: ["Let me ", "think."])
    tool_calls: list[dict] | None = None  # sent in a chunk of their own after the tokens (chat only)
    stream_error: str | None = None  # sent as a final {"error"} line after the tokens
    status_error: tuple[int, str] | None = None  # answer every API call with this status and message
    requests: list[Recorded] = field(default_factory=list)
    tcp_port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, tcp: bool = False) -> FakeDaemon:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(tcp), self._loop).result(10)
        return self

    async def _start(self, tcp: bool) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, self.socket_path).start()
        if tcp:
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.tcp_port = site._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    def bodies(self, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.path == path]

    # -- routes ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record], client_max_size=1024**3)
        app.router.add_get("/", _static(lambda: web.Response(text="Ollama is running")))
        app.router.add_get("/api/version", _static(lambda: web.json_response({"version": "0.32.15",
                                                                                "llmhost": "0.1.0"})))
        app.router.add_get("/api/tags", _static(lambda: web.json_response({"models": [tag_entry(n) for n in self.models]})))
        app.router.add_get("/api/ps", _static(lambda: web.json_response({"models": self.loaded})))
        app.router.add_post("/api/show", self._show)
        app.router.add_post("/api/copy", self._copy)
        app.router.add_delete("/api/delete", self._delete)
        app.router.add_post("/api/pull", self._pull)
        app.router.add_post("/api/push", self._push)
        app.router.add_post("/api/create", self._create)
        app.router.add_route("HEAD", "/api/blobs/{digest}", self._blob_head)
        app.router.add_post("/api/blobs/{digest}", self._blob_upload)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/embed", self._embed)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler):
        body = None
        if request.can_read_body and not request.path.startswith("/api/blobs/"):
            body = await request.json()
        self.requests.append(Recorded(request.method, request.path, body))
        if self.status_error and request.path != "/":
            status, message = self.status_error
            return web.json_response({"error": message}, status=status)
        return await handler(request)

    def _require(self, name: str) -> None:
        if name not in self.models and f"{name}:latest" not in self.models:
            raise web.HTTPNotFound(text=json.dumps({"error": f"model '{name}' not found"}),
                                   content_type="application/json")

    def _info(self, name: str) -> dict:
        """The ``/api/show`` answer of a model (404 when absent)."""
        self._require(name)
        return self.models.get(name) or self.models[f"{name}:latest"]

    async def _show(self, request: web.Request) -> web.Response:
        return web.json_response(self._info((await request.json())["model"]))

    async def _copy(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._require(body["source"])
        self.models[body["destination"]] = show_answer(body["destination"])
        return web.Response()

    async def _delete(self, request: web.Request) -> web.Response:
        name = (await request.json())["model"]
        self._require(name)
        self.models.pop(name, None) or self.models.pop(f"{name}:latest", None)
        return web.Response()

    async def _ndjson(self, request: web.Request, lines: list[dict]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for line in lines:
            await response.write(json.dumps(line).encode() + b"\n")
        if self.stream_error:
            await response.write(json.dumps({"error": self.stream_error}).encode() + b"\n")
        await response.write_eof()
        return response

    async def _pull(self, request: web.Request) -> web.StreamResponse:
        name = (await request.json())["model"]
        total = 4_000_000
        events = [{"status": "pulling manifest"}]
        events += [
            {"status": f"pulling {DIGEST[7:19]}", "digest": DIGEST, "total": total, "completed": done}
            for done in (0, total // 2, total)
        ]
        events += [{"status": s} for s in ("verifying sha256 digest", "writing manifest", "success")]
        self.models[name] = show_answer(name)
        return await self._ndjson(request, events)

    async def _push(self, request: web.Request) -> web.StreamResponse:
        total = 1_000_000
        events = [{"status": "retrieving manifest"}]
        events += [{"status": f"pushing {DIGEST[7:19]}", "digest": DIGEST, "total": total, "completed": done}
                   for done in (0, total)]
        events += [{"status": "pushing manifest"}, {"status": "success"}]
        return await self._ndjson(request, events)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        for digest in (body.get("files") or {}).values():
            if digest not in self.blobs:
                return web.json_response({"error": f"blob {digest} not found"}, status=400)
        self.models[body["model"]] = show_answer(body["model"])
        events = [{"status": "parsing GGUF"}, {"status": "writing manifest"}, {"status": "success"}]
        return await self._ndjson(request, events)

    async def _blob_head(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if request.match_info["digest"] in self.blobs else 404)

    async def _blob_upload(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        data = await request.read()
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if got != digest:
            return web.json_response({"error": f"digest mismatch, expected {digest!r}, got {got!r}"}, status=400)
        self.blobs[digest] = data
        return web.Response(status=201)

    def _thinks(self, body: dict) -> bool:
        """Whether the model thinks for this request; a 400 for ``think`` on a model that cannot."""
        think = body.get("think")
        capable = "thinking" in self._info(body["model"]).get("capabilities", [])
        if think not in (None, False) and not capable:
            raise web.HTTPBadRequest(text=json.dumps({"error": f'"{body["model"]}" does not support thinking'}),
                                     content_type="application/json")
        return capable and think is not False

    async def _answer(self, request: web.Request, piece) -> web.StreamResponse:
        body = await request.json()
        self._require(body["model"])
        thoughts = self.thoughts if self._thinks(body) else []
        base = {"model": body["model"], "created_at": "2026-01-01T00:00:00Z"}
        empty = not (body.get("prompt") or body.get("messages"))
        if empty:  # load or unload
            reason = "unload" if body.get("keep_alive") == 0 else "load"
            return web.json_response({**base, **piece(""), "done": True, "done_reason": reason})
        if body.get("stream") is False:
            extra = {"thinking": "".join(thoughts)} if thoughts else {}
            return web.json_response({**base, **piece("".join(self.tokens), **extra), **final_metrics()})
        lines = [{**base, **piece("", thinking=t), "done": False} for t in thoughts]
        lines += [{**base, **piece(t), "done": False} for t in self.tokens]
        if self.tool_calls and "messages" in body:
            lines.append({**base, **piece("", tool_calls=self.tool_calls), "done": False})
        if not self.stream_error:
            lines.append({**base, **piece(""), **final_metrics()})
        return await self._ndjson(request, lines)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, lambda text, **extra: {"response": text, **extra})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(
            request, lambda text, **extra: {"message": {"role": "assistant", "content": text, **extra}}
        )

    async def _embed(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"model": body["model"], "embeddings": [[0.6, 0.8]]})


if __name__ == "__main__":
    daemon = FakeDaemon(sys.argv[1]).start()
    threading.Event().wait()
