"""A fake Hugging Face Hub on 127.0.0.1: the few endpoints huggingface_hub uses to list and fetch files.

    GET  /api/models/<org>/<repo>[/revision/<rev>]   model_info (siblings; sizes and lfs with ?blobs=true)
    GET  /api/models/<org>/<repo>/tree/<rev>[/<dir>] list_repo_tree / list_repo_files
    HEAD /<org>/<repo>/resolve/<rev>/<file>          ETag (the LFS sha256), X-Repo-Commit, Content-Length
    GET  /<org>/<repo>/resolve/<rev>/<file>          the bytes, with Range

Errors carry the ``X-Error-Code`` headers the real Hub sends (RepoNotFound, GatedRepo, EntryNotFound),
since huggingface_hub picks its exception classes from them. Every request is recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
from aiohttp import web

COMMIT = "c0ffee" + "0" * 34


@dataclass
class FakeRepo:
    """One model repository: file path → bytes. ``lfs`` False serves them as plain git files."""

    files: dict[str, bytes]
    lfs: bool = True
    gated: bool = False  # files need ``Authorization: Bearer <FakeHub.token>``
    sha: str = COMMIT
    bad_sha256: set[str] = field(default_factory=set)  # files whose listed sha256 is wrong

    def sha256(self, path: str) -> str:
        if path in self.bad_sha256:
            return "0" * 64
        return hashlib.sha256(self.files[path]).hexdigest()


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    token: str = "hf_test_token"
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path?query)
    bytes_sent: int = 0
    throttle: float = 0.0  # seconds to wait between 4 KiB chunks of a file
    url: str = ""

    def add(self, repo_id: str, files: dict[str, bytes], **kw) -> FakeRepo:
        repo = FakeRepo(files, **kw)
        self.repos[repo_id] = repo
        return repo

    def file_gets(self) -> list[str]:
        """Paths of the files downloaded with GET."""
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]

    # ---- handlers ----------------------------------------------------------------------------

    @web.middleware
    async def record(self, request: web.Request, handler):
        self.requests.append((request.method, request.path_qs))
        return await handler(request)

    def _repo(self, request: web.Request) -> FakeRepo:
        repo = self.repos.get(f"{request.match_info['org']}/{request.match_info['repo']}")
        if repo is None:  # the Hub answers 401 for unknown (or private) repos to anonymous callers
            raise web.HTTPUnauthorized(headers={"X-Error-Code": "RepoNotFound",
                                                "X-Error-Message": "Repository not found"})
        return repo

    async def model_info(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        blobs = request.query.get("blobs", "").lower() == "true"
        siblings = [self._sibling(repo, path, blobs) for path in sorted(repo.files)]
        doc = {"id": f"{request.match_info['org']}/{request.match_info['repo']}", "sha": repo.sha,
               "private": False, "gated": "manual" if repo.gated else False, "siblings": siblings}
        return web.json_response(doc)

    def _sibling(self, repo: FakeRepo, path: str, blobs: bool) -> dict:
        entry: dict = {"rfilename": path}
        if blobs:
            entry["size"] = len(repo.files[path])
            entry["blobId"] = hashlib.sha1(repo.files[path]).hexdigest()
            if repo.lfs:
                entry["lfs"] = {"size": len(repo.files[path]), "sha256": repo.sha256(path), "pointerSize": 134}
        return entry

    async def tree(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        prefix = request.match_info.get("path", "").strip("/")
        entries = []
        for path in sorted(repo.files):
            if prefix and not path.startswith(prefix + "/"):
                continue
            entry = {"type": "file", "oid": hashlib.sha1(repo.files[path]).hexdigest(), "size": len(repo.files[path]),
                     "path": path}
            if repo.lfs:
                entry["lfs"] = {"oid": repo.sha256(path), "size": len(repo.files[path]), "pointerSize": 134}
            entries.append(entry)
        return web.json_response(entries)

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        repo = self._repo(request)
        if repo.gated and request.headers.get("Authorization") != f"Bearer {self.token}":
            raise web.HTTPUnauthorized(headers={
                "X-Error-Code": "GatedRepo",
                "X-Error-Message": "Access to this model is restricted. You must be authenticated to access it."})
        path = request.match_info["path"]
        if path not in repo.files:
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.sha,
                                            "X-Error-Message": "Entry not found"})
        data = repo.files[path]
        etag = repo.sha256(path) if repo.lfs else hashlib.sha1(data).hexdigest()
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        start, end = _range(request.headers.get("Range"), len(data))
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(data))})
        if (start, end) != (0, len(data)):
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        response = web.StreamResponse(status=206 if "Content-Range" in headers else 200,
                                      headers={**headers, "Content-Length": str(end - start)})
        await response.prepare(request)
        for offset in range(start, end, 4096):
            if self.throttle:
                await asyncio.sleep(self.throttle)
            chunk = data[offset:min(offset + 4096, end)]
            await response.write(chunk)
            self.bytes_sent += len(chunk)
        await response.write_eof()
        return response

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.record])
        app.router.add_get("/api/models/{org}/{repo}", self.model_info)
        app.router.add_get("/api/models/{org}/{repo}/revision/{rev}", self.model_info)
        app.router.add_get("/api/models/{org}/{repo}/tree/{rev}", self.tree)
        app.router.add_get("/api/models/{org}/{repo}/tree/{rev}/{path:.*}", self.tree)
        app.router.add_route("HEAD", "/{org}/{repo}/resolve/{rev}/{path:.*}", self.resolve)
        app.router.add_get("/{org}/{repo}/resolve/{rev}/{path:.*}", self.resolve, allow_head=False)
        return app


def _range(header: str | None, size: int) -> tuple[int, int]:
    if not header or not header.startswith("bytes="):
        return 0, size
    first, _, last = header[len("bytes="):].partition("-")
    return int(first), min(int(last) + 1, size) if last else size


async def start_hub() -> tuple[FakeHub, web.AppRunner]:
    hub = FakeHub()
    runner = web.AppRunner(hub.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hub.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    return hub, runner


def split_gguf(source: Path, directory: Path, stem: str, parts: int) -> list[Path]:
    """Split a GGUF into ``<stem>-0000k-of-0000N.gguf`` files as llama.cpp's gguf-split does."""
    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    per_part = -(-len(reader.tensors) // parts)
    writer = gguf.GGUFWriter(directory / f"{stem}.gguf", arch, split_max_tensors=per_part)
    for name, field_ in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value_type = field_.types[0]
        sub_type = field_.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field_.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data))  # the tiny models are float32
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    paths = sorted(directory.glob(f"{stem}-*-of-*.gguf"))
    assert len(paths) == parts, paths
    return paths
