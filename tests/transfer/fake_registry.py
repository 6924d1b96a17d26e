"""A Docker-distribution registry on 127.0.0.1 that speaks what Ollama's registry speaks.

Manifests with the v2 media type, blobs with Range, optional Bearer-token auth with a realm, uploads
via POST/PATCH/PUT. It can throttle, stall or corrupt blob responses and counts the blob bytes it
sends, so resume and de-duplication can be asserted on bytes transferred.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
MODEL = "application/vnd.ollama.image.model"
PARAMS = "application/vnd.ollama.image.params"
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest_bytes(config: bytes, layers: list[tuple[str, bytes]]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {"mediaType": CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": t, "digest": sha(d), "size": len(d)} for t, d in layers],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


@dataclass
class FakeRegistry:
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    served: Counter = field(default_factory=Counter)  # blob body bytes sent, per digest
    blob_gets: Counter = field(default_factory=Counter)  # GET requests per digest
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    rate: float | None = None  # bytes per second per response (None: as fast as possible)
    chunk: int = 64 << 10
    corrupt: dict[str, bytes] = field(default_factory=dict)  # digest → bytes served instead
    stall_once: dict[str, float] = field(default_factory=dict)  # digest → seconds the first GET hangs
    ignore_range: bool = False
    token: str | None = None  # when set, every /v2 request needs "Bearer <token>"
    realm: str | None = None  # defaults to this server's /token
    challenge: str | None = None  # overrides the WWW-Authenticate header (None: a Bearer challenge)
    tokens_issued: int = 0
    files: dict[str, bytes] = field(default_factory=dict)  # /files/<name>, for URL pulls
    redirect_blobs: str | None = None  # base URL blob requests are redirected to (a "CDN": <base>/files/<digest>)
    authorization_seen: list = field(default_factory=list)  # Authorization headers received, in order
    uploads: dict[str, bytearray] = field(default_factory=dict)
    uploaded: Counter = field(default_factory=Counter)  # bytes received per upload PATCH series
    url: str = ""

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> FakeRegistry:
        app = web.Application(middlewares=[self._record], client_max_size=1 << 32)
        app.router.add_get("/v2/", self._base)
        app.router.add_get("/token", self._token)
        repo = "/v2/{ns}/{model}"
        app.router.add_get(repo + "/manifests/{tag}", self._get_manifest)
        app.router.add_put(repo + "/manifests/{tag}", self._put_manifest)
        app.router.add_get(repo + "/blobs/{digest}", self._get_blob)
        app.router.add_post(repo + "/blobs/uploads/", self._start_upload)
        app.router.add_patch(repo + "/blobs/uploads/{id}", self._patch_upload)
        app.router.add_put(repo + "/blobs/uploads/{id}", self._finish_upload)
        app.router.add_get("/files/{name}", self._get_file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        await self._runner.cleanup()

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    # ---- content -----------------------------------------------------------------------------

    def add_model(self, ns: str, model: str, tag: str, layers: list[tuple[str, bytes]],
                  config: bytes | None = None) -> bytes:
        """Publish a model; returns its manifest bytes."""
        config = config if config is not None else json.dumps({"model_format": "gguf"}).encode()
        for data in (config, *(d for _, d in layers)):
            self.blobs[sha(data)] = data
        manifest = manifest_bytes(config, layers)
        self.manifests[(ns, model, tag)] = manifest
        return manifest

    def reset_counts(self) -> None:
        self.served.clear()
        self.blob_gets.clear()
        self.requests.clear()

    # ---- handlers ----------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler):
        self.requests.append((request.method, request.path))
        if "Authorization" in request.headers:
            self.authorization_seen.append(request.headers["Authorization"])
        authorized = request.headers.get("Authorization") == f"Bearer {self.token}"
        if self.token and request.path.startswith("/v2") and not authorized:
            realm = self.realm or f"{self.url}/token"
            header = self.challenge if self.challenge is not None else (
                f'Bearer realm="{realm}",service="fake-registry",scope="repository:x:pull"')
            headers = {"WWW-Authenticate": header} if header else {}
            return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                                     status=401, headers=headers)
        return await handler(request)

    async def _base(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _token(self, request: web.Request) -> web.Response:
        self.tokens_issued += 1
        return web.json_response({"token": self.token or "anonymous"})

    async def _get_manifest(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["model"], request.match_info["tag"])
        data = self.manifests.get(key)
        if data is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]},
                                     status=404)
        return web.Response(body=data, content_type=MANIFEST_V2, headers={"Docker-Content-Digest": sha(data)})

    async def _put_manifest(self, request: web.Request) -> web.Response:
        data = await request.read()
        doc = json.loads(data)
        for item in [doc["config"], *doc["layers"]]:
            if item["digest"] not in self.blobs:
                return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=400)
        key = (request.match_info["ns"], request.match_info["model"], request.match_info["tag"])
        self.manifests[key] = data
        return web.Response(status=201, headers={"Docker-Content-Digest": sha(data)})

    async def _get_blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        if self.redirect_blobs:
            raise web.HTTPTemporaryRedirect(f"{self.redirect_blobs}/files/{digest}")
        if digest not in self.blobs:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        data = self.corrupt.get(digest, self.blobs[digest])
        if request.method == "GET":
            self.blob_gets[digest] += 1
        return await self._send(request, data, digest)

    async def _get_file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self.files:
            raise web.HTTPNotFound()
        return await self._send(request, self.files[name], name)

    async def _send(self, request: web.Request, data: bytes, key: str) -> web.StreamResponse:
        headers = {"Content-Type": "application/octet-stream", "ETag": f'"{key}"'}
        if not self.ignore_range:
            headers["Accept-Ranges"] = "bytes"
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(data))})
        start, end = 0, len(data)
        match = _RANGE.fullmatch(request.headers.get("Range", ""))
        status = 200
        if match and not self.ignore_range:
            start = int(match.group(1))
            end = min(int(match.group(2)) + 1 if match.group(2) else len(data), len(data))
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        response = web.StreamResponse(status=status, headers={**headers, "Content-Length": str(end - start)})
        await response.prepare(request)
        if key in self.stall_once:
            await asyncio.sleep(self.stall_once.pop(key))
        for offset in range(start, end, self.chunk):
            piece = data[offset:min(offset + self.chunk, end)]
            await response.write(piece)
            self.served[key] += len(piece)
            if self.rate:
                await asyncio.sleep(len(piece) / self.rate)
        await response.write_eof()
        return response

    async def _start_upload(self, request: web.Request) -> web.Response:
        upload = uuid.uuid4().hex
        self.uploads[upload] = bytearray()
        location = f"/v2/{request.match_info['ns']}/{request.match_info['model']}/blobs/uploads/{upload}"
        return web.Response(status=202, headers={"Location": location, "Range": "0-0"})

    async def _patch_upload(self, request: web.Request) -> web.Response:
        upload = request.match_info["id"]
        buf = self.uploads.get(upload)
        if buf is None:
            return web.json_response({"errors": [{"code": "BLOB_UPLOAD_UNKNOWN"}]}, status=404)
        start = int(request.headers.get("Content-Range", "0-0").split("-")[0])
        if start != len(buf):
            return web.Response(status=416)
        async for chunk in request.content.iter_chunked(1 << 20):
            buf += chunk
            self.uploaded[upload] += len(chunk)
        return web.Response(status=202, headers={"Location": str(request.rel_url.path), "Range": f"0-{len(buf) - 1}"})

    async def _finish_upload(self, request: web.Request) -> web.Response:
        upload = request.match_info["id"]
        buf = self.uploads.pop(upload, None)
        digest = request.query.get("digest", "")
        if buf is None:
            return web.json_response({"errors": [{"code": "BLOB_UPLOAD_UNKNOWN"}]}, status=404)
        buf += await request.read()
        if sha(bytes(buf)) != digest:
            return web.json_response({"errors": [{"code": "DIGEST_INVALID"}]}, status=400)
        self.blobs[digest] = bytes(buf)
        return web.Response(status=201, headers={"Docker-Content-Digest": digest})
