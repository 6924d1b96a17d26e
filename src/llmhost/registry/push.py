"""Pushing a model to an Ollama-compatible registry (the Docker distribution upload API).

    for each blob:  HEAD …/blobs/<digest>            200: the registry has it, skip
                    POST …/blobs/uploads/            202 + Location
                    PATCH <Location> (chunks)        202 + Location each
                    PUT <Location>?digest=<digest>   201
    then            PUT …/manifests/<tag>            the stored manifest bytes, unchanged

Events: ``retrieving manifest``, ``pushing <digest[7:19]>`` with total/completed, ``pushing manifest``,
``success``. Only blobs named by a validated manifest are read, through ``Store.blob_path``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from llmhost.errors import PushError
from llmhost.registry.download import ProgressCallback, emit
from llmhost.registry.manifest import MANIFEST_V2, Layer, Manifest
from llmhost.registry.names import ModelName
from llmhost.registry.sources.ollama import RegistryClient, new_session, registry_for
from llmhost.registry.store import Store

CHUNK_SIZE = 64 << 20  # bytes per PATCH
READ_SIZE = 1 << 20
PROGRESS_INTERVAL = 0.08
ERROR_BODY_LIMIT = 64 << 10


async def push_model(
    store: Store,
    name: ModelName | str,
    progress: ProgressCallback | None = None,
    *,
    scheme: str | None = None,
    insecure: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> None:
    """Upload ``name``'s blobs and manifest to the registry its host names.

    Raises ModelNotFound when the model is not installed, BadRequest for plain http without
    ``insecure``, PushError when the registry refuses or cannot be reached.
    """
    name = name if isinstance(name, ModelName) else ModelName.parse(name)
    registry = registry_for(name, scheme, insecure)
    await emit(progress, {"status": "retrieving manifest"})
    data = await asyncio.to_thread(_stored_manifest, store, name)
    manifest = Manifest.parse(data)
    async with new_session() as session:
        client = RegistryClient(session, registry, "pull,push", PushError)
        try:
            for layer in _unique(manifest):
                await _push_blob(client, store, layer, progress, chunk_size)
            await emit(progress, {"status": "pushing manifest"})
            await _put_manifest(client, data)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise PushError(f"push to {name.host} failed: {e or type(e).__name__}") from None
    await emit(progress, {"status": "success"})


def _stored_manifest(store: Store, name: ModelName) -> bytes:
    """The exact bytes installed for ``name`` (so the pushed manifest keeps its digest)."""
    return store.manifest_path(store.resolve(name)).read_bytes()


def _unique(manifest: Manifest) -> list[Layer]:
    seen: dict[str, Layer] = {}
    for layer in manifest.all_layers():
        seen.setdefault(layer.digest, layer)
    return list(seen.values())


async def _push_blob(client: RegistryClient, store: Store, layer: Layer, progress: ProgressCallback | None,
                     chunk_size: int) -> None:
    event = {"status": f"pushing {layer.digest[7:19]}", "digest": layer.digest, "total": layer.size}
    repository = client.registry.repository
    async with await client.request("HEAD", f"{repository}/blobs/{layer.digest}") as resp:
        exists = resp.status == 200
        _check_auth(client, resp, "pushing blob")
    if exists:
        await emit(progress, {**event, "completed": layer.size})
        return
    await emit(progress, {**event, "completed": 0})
    location = await _start_upload(client)
    path = store.blob_path(layer.digest)
    reporter = _Reporter(progress, event)
    for start in range(0, layer.size, chunk_size):
        length = min(chunk_size, layer.size - start)
        location = await _patch(client, location, path, start, length, reporter)
    await reporter.report(layer.size, force=True)
    target = URL(location).update_query(digest=layer.digest)
    async with await client.request("PUT", str(target), headers={"Content-Length": "0"}) as resp:
        await _expect(client, resp, (201, 204), f"finishing the upload of {layer.digest}")


async def _start_upload(client: RegistryClient) -> str:
    url = f"{client.registry.repository}/blobs/uploads/"
    async with await client.request("POST", url, headers={"Content-Length": "0"}) as resp:
        await _expect(client, resp, (202, 201), "starting a blob upload")
        return _location(resp, url)


async def _patch(client: RegistryClient, location: str, path: Path, start: int, length: int,
                 reporter: _Reporter) -> str:
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length),
               "Content-Range": f"{start}-{start + length - 1}"}
    def body() -> AsyncIterator[bytes]:  # a fresh stream for each try (a 401 makes a second one)
        return _read_range(path, start, length, reporter)

    async with await client.request("PATCH", location, headers=headers, body=body) as resp:
        await _expect(client, resp, (202, 204), f"uploading bytes {start}-{start + length - 1}")
        return _location(resp, location)


async def _read_range(path: Path, start: int, length: int, reporter: _Reporter) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(open, path, "rb")
    with f:
        f.seek(start)
        sent = 0
        while sent < length:
            data = await asyncio.to_thread(f.read, min(READ_SIZE, length - sent))
            if not data:
                raise PushError(f"{path.name} is shorter than its manifest says")
            sent += len(data)
            yield data
            await reporter.report(start + sent)


async def _put_manifest(client: RegistryClient, data: bytes) -> None:
    url = client.registry.manifest_url()
    async with await client.request("PUT", url, headers={"Content-Type": MANIFEST_V2}, body=data) as resp:
        await _expect(client, resp, (200, 201, 202), "pushing the manifest")


class _Reporter:
    """Throttled, never-decreasing progress for one blob."""

    def __init__(self, progress: ProgressCallback | None, event: dict[str, Any]):
        self.progress, self.event = progress, event
        self.completed, self.last = 0, 0.0

    async def report(self, completed: int, force: bool = False) -> None:
        if completed <= self.completed and not force:
            return
        self.completed = max(self.completed, completed)
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            await emit(self.progress, {**self.event, "completed": self.completed})


def _check_auth(client: RegistryClient, resp: aiohttp.ClientResponse, what: str) -> None:
    if resp.status == 401:
        raise client.unauthorized(what)


async def _expect(client: RegistryClient, resp: aiohttp.ClientResponse, ok: tuple[int, ...], what: str) -> None:
    _check_auth(client, resp, what)
    if resp.status not in ok:
        reason = _registry_message(await resp.content.read(ERROR_BODY_LIMIT))
        detail = f": {reason}" if reason else ""
        raise PushError(f"{what}: {client.registry.name.host} answered HTTP {resp.status}{detail}")


def _registry_message(body: bytes) -> str:
    """The first message of a Docker-shaped error body (``{"errors":[{"code","message"}]}``), if any."""
    try:
        errors = json.loads(body).get("errors")
        first = errors[0]
        return str(first.get("message") or first.get("code") or "")[:200]
    except (ValueError, AttributeError, TypeError, IndexError, KeyError):
        return ""


def _location(resp: aiohttp.ClientResponse, base: str) -> str:
    location = resp.headers.get("Location")
    if not location:
        raise PushError(f"the registry sent no upload location (HTTP {resp.status})")
    return str(URL(base).join(URL(location)))
