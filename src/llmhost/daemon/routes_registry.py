"""The read side of the registry protocol (``LLMHOST_SERVE_REGISTRY=1``): other llmhost or Ollama
instances can pull this daemon's models with ``pull --insecure http://<this host>/<ns>/<model>:<tag>``.

    GET  /v2/                                     200 {}
    GET  /v2/<ns>/<model>/manifests/<tag>         the stored bytes, Docker-Content-Digest  (HEAD too)
    GET  /v2/<ns>/<model>/blobs/<digest>          the blob, with Range                    (HEAD too)

Read-only: uploads are refused. A repository maps to the installed model of that namespace, model
and tag on any host (the default host first). Only blobs that repository's manifests reference are
served, and digests are validated before they touch a path. Errors use Docker's shape.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from llmhost.daemon.dialects import DOCKER_HEADERS, Dialect, error_response
from llmhost.daemon.state import state_of
from llmhost.errors import BadRequest, InvalidManifest, LlmhostError, MethodNotAllowed, NotFound
from llmhost.registry.manifest import MANIFEST_V2, Manifest, is_digest
from llmhost.registry.names import DEFAULT_HOST, ModelName
from llmhost.registry.store import ModelEntry, Store

routes = web.RouteTableDef()
_REPO = "/v2/{namespace}/{model}"


def docker_error(error: LlmhostError, code: str, detail: object = None) -> web.Response:
    """``{"errors":[{"code","message","detail"}]}``, as a distribution registry answers."""
    return error_response(error, Dialect.DOCKER, code=code, detail=detail)


@routes.get("/v2/")
@routes.get("/v2")
async def api_base(request: web.Request) -> web.Response:
    return web.json_response({}, headers=DOCKER_HEADERS)


@routes.get(_REPO + "/manifests/{reference}")
async def get_manifest(request: web.Request) -> web.Response:
    store = _store(request)
    namespace, model, reference = (request.match_info[k] for k in ("namespace", "model", "reference"))
    try:
        data = await state_of(request).in_store(_find_manifest, store, namespace, model, reference)
    except BadRequest as e:
        return docker_error(BadRequest("invalid repository name or tag"), "NAME_INVALID", e.message)
    if data is None:
        return docker_error(NotFound("manifest unknown"), "MANIFEST_UNKNOWN", {"Tag": reference})
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    headers = {**DOCKER_HEADERS, "Docker-Content-Digest": digest, "ETag": f'"{digest}"'}
    return web.Response(body=data, content_type=MANIFEST_V2, headers=headers)


@routes.get(_REPO + "/blobs/{digest}")
async def get_blob(request: web.Request) -> web.StreamResponse:
    store = _store(request)
    namespace, model, digest = (request.match_info[k] for k in ("namespace", "model", "digest"))
    if not is_digest(digest):
        return docker_error(BadRequest("provided digest did not match uploaded content"), "DIGEST_INVALID",
                            "expected sha256:<64 lowercase hex>")
    known = await state_of(request).in_store(_repository_digests, store, namespace, model)
    path = store.blob_path(digest)
    if digest not in known or not path.is_file():
        return docker_error(NotFound("blob unknown to registry"), "BLOB_UNKNOWN", {"digest": digest})
    headers = {**DOCKER_HEADERS, "Docker-Content-Digest": digest, "Content-Type": "application/octet-stream",
               "ETag": f'"{digest}"', "Cache-Control": "max-age=31536000"}
    return web.FileResponse(path, headers=headers)  # Range, If-Range and HEAD handled by aiohttp


@routes.route("*", "/v2/{tail:.*}")
async def read_only(request: web.Request) -> web.Response:
    if request.method in ("GET", "HEAD"):
        return docker_error(NotFound("repository name not known to registry"), "NAME_UNKNOWN", {"path": request.path})
    return docker_error(MethodNotAllowed("this llmhost registry is read-only"), "UNSUPPORTED")


def _store(request: web.Request) -> Store:
    return state_of(request).store


def _find_manifest(store: Store, namespace: str, model: str, reference: str) -> bytes | None:
    """The stored manifest bytes for a tag (or a manifest digest), or None."""
    if reference.startswith("sha256:"):
        return _by_digest(store, namespace, model, reference)
    for name in _candidates(store, namespace, model, reference):
        try:
            found = store.resolve(name)
            data = store.manifest_path(found).read_bytes()
            Manifest.parse(data)  # never serve a damaged manifest
            return data
        except (NotFound, InvalidManifest, OSError):
            continue
    return None


def _candidates(store: Store, namespace: str, model: str, tag: str) -> list[ModelName]:
    """The name on the default host first, then the same namespace/model/tag on every other host."""
    first = ModelName(DEFAULT_HOST, namespace, model, tag)  # validates the parts (BadRequest)
    hosts = sorted(p.name for p in store.manifests_dir.iterdir()) if store.manifests_dir.is_dir() else []
    names = [first]
    for host in hosts:
        if host.lower() != DEFAULT_HOST:
            try:
                names.append(ModelName(host, namespace, model, tag))
            except BadRequest:
                continue
    return names


def _by_digest(store: Store, namespace: str, model: str, reference: str) -> bytes | None:
    if not is_digest(reference):
        raise BadRequest(f"invalid manifest digest {reference!r}")
    for entry in _repository_entries(store, namespace, model):
        if "sha256:" + entry.digest == reference:
            return store.manifest_path(entry.name).read_bytes()
    return None


def _repository_entries(store: Store, namespace: str, model: str) -> list[ModelEntry]:
    wanted = (namespace.lower(), model.lower())
    return [e for e in store.list_models() if (e.name.namespace.lower(), e.name.model.lower()) == wanted]


def _repository_digests(store: Store, namespace: str, model: str) -> set[str]:
    """Digests of every blob the repository's manifests (any tag, any host) reference."""
    return {layer.digest for e in _repository_entries(store, namespace, model) for layer in e.manifest.all_layers()}
