"""Blob uploads: bounded in size and idle time, never holding threads the store needs, clean on a full disk.

Stalled and oversized uploads are sent over raw connections (headers and a few bytes, then silence),
the way a hostile or broken client sends them.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
from pathlib import Path

import pytest

from llmhost.registry.store import Store
from tests.daemon.conftest import Harness, add_model
from tests.registry.helpers import write_tiny_gguf
from tests.support.daemon_app import start_app
from tests.support.tmpfs import fill, small_disk  # noqa: F401
from tests.support.waiting import eventually

STALLS = 40  # more than any default executor has threads (min(32, CPUs + 4))
ANSWER_WITHIN = 5.0  # a freeze check with a wide margin: each answer takes milliseconds


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
async def daemon(harness, tmp_path):
    """Start another app over ``harness``'s store (or ``store``) with LLMHOST_* settings for the test."""
    clients = []

    async def start(store: Store | None = None, **env: str) -> Harness:
        store = store or harness.store
        started = await start_app(store, tmp_path / "uploads.sock", residency=harness.residency, env=env)
        clients.append(started.client)
        return started

    yield start
    for client in clients:
        await client.close()


async def open_upload(daemon: Harness, digest: str, declared: int | None, first: bytes = b""):
    """A raw connection that has sent an upload's headers and ``first`` body bytes."""
    server = daemon.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    framing = f"Content-Length: {declared}" if declared is not None else "Transfer-Encoding: chunked"
    head = f"POST /api/blobs/{digest} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n{framing}\r\n\r\n"
    writer.write(head.encode() + first)
    await writer.drain()
    return reader, writer


async def answer_to(daemon: Harness, digest: str, declared: int, first: bytes = b"") -> tuple[int, dict]:
    """The status and JSON body the daemon answers to an upload that sends ``first`` and then nothing."""
    reader, writer = await open_upload(daemon, digest, declared, first)
    return await read_answer(reader, writer)


def temp_files(store: Store) -> list[Path]:
    return list(store.root.rglob(".tmp-*"))


def files(store: Store) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if p.is_file())


# ---- stalls never freeze the store ---------------------------------------------------------------


@pytest.mark.parametrize("method, path, body", [
    pytest.param("GET", "/api/tags", None, id="tags"),
    pytest.param("POST", "/api/show", {"model": "tiny"}, id="show"),
    pytest.param("POST", "/api/copy", {"source": "tiny", "destination": "copy"}, id="copy"),
    pytest.param("POST", "/api/create", {"model": "other", "from": "tiny", "system": "Be other.", "stream": False},
                 id="create"),
    pytest.param("POST", "/api/generate", {"model": "tiny", "prompt": "hi", "stream": False}, id="generate"),
    pytest.param("DELETE", "/api/delete", {"model": "tiny"}, id="delete"),
])
async def test_stalled_uploads_leave_the_store_answering(daemon, method, path, body):
    app = await daemon(LLMHOST_BODY_IDLE_TIMEOUT="60s")
    stalled = [await open_upload(app, sha256(b"%d" % i), 1 << 20, b"a few bytes") for i in range(STALLS)]
    try:
        await eventually(lambda: len(temp_files(app.store)) == STALLS, timeout=ANSWER_WITHIN, what="every upload begun")
        response = await asyncio.wait_for(app.client.request(method, path, json=body), ANSWER_WITHIN)
        assert response.status == 200, await response.text()
        assert len(temp_files(app.store)) == STALLS, "every upload was being received meanwhile"
    finally:
        for _, writer in stalled:
            writer.close()
    await eventually(lambda: not temp_files(app.store), timeout=ANSWER_WITHIN,
                     what="no partial upload left by a client that hangs up")


async def test_idle_upload_is_cut_after_the_timeout_and_leaves_nothing(daemon):
    app = await daemon(LLMHOST_BODY_IDLE_TIMEOUT="0.3s")
    digest = sha256(b"never sent")
    status, body = await answer_to(app, digest, 1000, b"a few bytes")
    assert status == 408
    assert body["error"] == "request body stalled: nothing received for 0.3s (LLMHOST_BODY_IDLE_TIMEOUT)"
    assert not temp_files(app.store) and not app.store.has_blob(digest)


# ---- size limits ---------------------------------------------------------------------------------


async def test_declared_size_over_the_limit_is_refused_at_once(daemon):
    app = await daemon(LLMHOST_MAX_UPLOAD="1MiB")
    status, body = await answer_to(app, sha256(b"huge"), 10**12)  # not one body byte sent
    assert status == 413
    assert body["error"] == "request body too large: the limit is 1.0 MB (1048576 bytes, LLMHOST_MAX_UPLOAD)"
    assert not temp_files(app.store)


async def test_streamed_body_over_the_limit_is_refused_and_removed(daemon):
    app = await daemon(LLMHOST_MAX_UPLOAD="1MiB")
    data = bytes(3 << 20)

    async def unannounced():  # chunked: no Content-Length to refuse it by
        for start in range(0, len(data), 1 << 16):
            yield data[start:start + (1 << 16)]

    response = await app.client.post(f"/api/blobs/{sha256(data)}", data=unannounced())
    assert response.status == 413
    assert "1048576 bytes, LLMHOST_MAX_UPLOAD" in (await response.json())["error"]
    assert not temp_files(app.store) and not app.store.has_blob(sha256(data))


# ---- uploads that work ---------------------------------------------------------------------------


def _pieces(data: bytes, size: int):
    async def gen():
        for start in range(0, len(data), size):
            yield data[start:start + size]
    return gen()


@pytest.mark.parametrize("size, send", [
    pytest.param(10, lambda data: data, id="small, with Content-Length"),
    # A file-like body: aiohttp warns that 3 MB of bytes sent at once would hold up its event loop.
    pytest.param(3_000_001, io.BytesIO, id="several writes, with Content-Length"),
    pytest.param(3_000_001, lambda data: _pieces(data, 70_001), id="several writes, chunked"),
])
async def test_upload_is_stored_under_its_verified_digest(daemon, size, send):
    app = await daemon(LLMHOST_MAX_UPLOAD="8MiB")
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    response = await app.client.post(f"/api/blobs/{sha256(data)}", data=send(data))
    assert response.status == 201, await response.text()
    assert app.store.blob_path(sha256(data)).read_bytes() == data
    again = await app.client.post(f"/api/blobs/{sha256(data)}", data=send(data))
    assert again.status == 200, "a blob already held is not written again"
    wrong = "sha256:" + "0" * 64
    refused = await app.client.post(f"/api/blobs/{wrong}", data=send(data))
    assert refused.status == 400 and "digest mismatch" in (await refused.json())["error"]
    assert not temp_files(app.store) and not app.store.has_blob(wrong)


# ---- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
async def full_store(small_disk, tmp_path) -> Store:
    """A store holding the model "small" on a 4 MiB file system with no byte left."""
    store = Store(small_disk / "models")
    add_model(store, "small", write_tiny_gguf(tmp_path / "small.gguf"))
    fill(small_disk)
    return store


ZEROS = bytes(1 << 16)


@pytest.mark.parametrize("path, send, says", [
    pytest.param("/api/blobs/" + sha256(ZEROS), lambda: dict(data=ZEROS),
                 "no space left on device for blob sha256:", id="upload with Content-Length"),
    pytest.param("/api/blobs/" + sha256(ZEROS), lambda: dict(data=_pieces(ZEROS, 4096)),
                 "no space left on device while writing blob sha256:", id="upload, chunked"),
    pytest.param("/api/copy", lambda: dict(json={"source": "small", "destination": "copy"}),
                 "no space left on device while writing the manifest of copy:latest", id="copy"),
    pytest.param("/api/create", lambda: dict(json={"model": "other", "from": "small", "system": "new",
                                                   "stream": False}),
                 "no space left on device while writing ", id="create"),
])
async def test_full_disk_says_no_space_and_leaves_nothing(daemon, full_store, path, send, says):
    app = await daemon(full_store)
    before = files(full_store)
    response = await app.client.post(path, **send())
    assert response.status == 507
    error = (await response.json())["error"]
    assert error.startswith(says) and str(full_store.root) not in error
    assert files(full_store) == before, "no temp file left behind"


# ---- JSON bodies ---------------------------------------------------------------------------------


async def json_answer(daemon: Harness, path: str, declared: int, first: bytes) -> tuple[int, dict]:
    """The answer to a JSON request that sends ``first`` of ``declared`` bytes and then nothing."""
    server = daemon.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    head = (f"POST {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n")
    writer.write(head.encode() + first)
    await writer.drain()
    return await read_answer(reader, writer)


async def read_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, dict]:
    """The status and JSON body of the answer on a raw connection, which is then closed."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ANSWER_WITHIN)
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        return int(head.split()[1]), json.loads(await reader.readexactly(length))
    finally:
        writer.close()


async def test_a_stalled_json_body_is_cut_after_the_idle_timeout(daemon):
    app = await daemon(LLMHOST_BODY_IDLE_TIMEOUT="0.3s")
    status, body = await json_answer(app, "/api/chat", 500, b'{"model": "tiny", "messa')
    assert status == 408 and "LLMHOST_BODY_IDLE_TIMEOUT" in body["error"]
    assert app.factory.started == []


async def test_a_json_body_declared_over_the_limit_is_refused_at_once(daemon):
    app = await daemon()
    status, body = await json_answer(app, "/api/generate", 10**12, b"{")
    assert status == 413 and "JSON request bodies" in body["error"]
