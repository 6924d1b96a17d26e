"""Pulling from Ollama-compatible registries (the Docker distribution API): ``[host/][ns/]model[:tag]``.

    GET /v2/<ns>/<model>/manifests/<tag>   Docker v2 Accept header; a 401 Bearer challenge is answered
                                           only when its realm is on the registry's own host
    → the manifest is validated (media types, digests, sizes, size cap) before anything is written
    → each missing blob is downloaded by ``registry.download`` (ranged, resumable, verified)
    → the manifest is written; blobs the replaced manifest used that nothing needs any more are removed

``RegistryClient`` is shared with ``registry.push``.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from llmhost.errors import BadRequest, LlmhostError, NotFound, PullError
from llmhost.registry.download import (
    DOWNLOADS,
    BlobRequest,
    DownloadDiscarded,
    Downloads,
    ProgressCallback,
    check_space,
    emit,
    gather_cancelling,
    space_needed,
)
from llmhost.registry.manifest import MANIFEST_V2, MAX_MANIFEST_BYTES, Manifest, is_digest, size_mismatch
from llmhost.registry.names import ModelName
from llmhost.registry.net import read_capped
from llmhost.registry.store import Store

MAX_TOKEN_RESPONSE = 64 << 10
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_TOKEN = re.compile(r"[\x21-\x7e]{1,8192}")  # printable, no spaces: it goes into a header


@dataclass(frozen=True)
class Registry:
    """Where a model lives: the registry's base URL and the model's repository on it."""

    name: ModelName
    scheme: str  # http or https
    verify_tls: bool

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.name.host}"

    @property
    def repository(self) -> str:
        return f"{self.base}/v2/{self.name.namespace}/{self.name.model}"

    def blob_url(self, digest: str) -> str:
        return f"{self.repository}/blobs/{digest}"

    def manifest_url(self) -> str:
        return f"{self.repository}/manifests/{self.name.tag}"


def split_scheme(text: str) -> str | None:
    """The ``http``/``https`` a model name was typed with, or None (``ModelName.parse`` drops it)."""
    scheme, sep, _ = text.strip().partition("://")
    return scheme.lower() if sep else None


def registry_for(name: ModelName, scheme: str | None, insecure: bool) -> Registry:
    """The registry to talk to; plain http only with ``insecure`` (Ollama's ``errInsecureProtocol``).

    Without a scheme: https, or http when ``insecure`` (as Ollama does). An explicit ``https://``
    with ``insecure`` keeps TLS but skips certificate verification.
    """
    if scheme is None:
        scheme = "http" if insecure else "https"
    if scheme not in ("http", "https"):
        raise BadRequest(f'unsupported protocol "{scheme}" in "{name}": use https:// (or http:// with insecure)')
    if scheme == "http" and not insecure:
        raise BadRequest(
            f"insecure protocol http: {name.host} would be reached over plain http; "
            'pass --insecure ("insecure": true) to allow it'
        )
    return Registry(name, scheme, verify_tls=not insecure)


class RegistryClient:
    """Requests to one registry repository; answers a Bearer challenge once, on the same host only.

    A ``WWW-Authenticate`` realm on another host would receive our token request and credentials
    (CVE-2025-51471), so it is refused. Credentials are sent only to the registry's own origin.
    """

    def __init__(self, session: aiohttp.ClientSession, registry: Registry, actions: str,
                 error: type[LlmhostError] = PullError):
        self.session = session
        self.registry = registry
        self.actions = actions  # "pull" or "pull,push": the scope asked for without one in the challenge
        self.error = error
        self.token: str | None = None

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                      body: Any = None, allow_redirects: bool = True) -> aiohttp.ClientResponse:
        """Send a request, fetching a token and sending it again after a 401 challenge.

        ``body`` may be a callable returning a fresh body (a stream cannot be sent twice).
        The caller releases the response.
        """
        for attempt in range(2):
            sent_headers = {**(headers or {}), **(self.auth_headers() if self._own(url) else {})}
            data = body() if callable(body) else body
            response = await self.session.request(method, url, headers=sent_headers, data=data,
                                                   allow_redirects=allow_redirects, ssl=self._ssl())
            if response.status != 401 or attempt == 1:
                return response
            challenge = response.headers.get("WWW-Authenticate", "")
            response.release()
            self.token = await self._fetch_token(challenge)
        raise AssertionError("unreachable")

    def unauthorized(self, what: str) -> LlmhostError:
        return self.error(f"{what}: unauthorized: {self.registry.name.host} refused the request"
                          + (" even with a token" if self.token else ""))

    async def _fetch_token(self, challenge: str) -> str:
        host = self.registry.name.host
        params = parse_challenge(challenge)
        realm = params.get("realm")
        if not realm:
            raise self.error(f"unauthorized: {host} requires authentication and sent no usable Bearer challenge")
        try:
            realm_url = URL(realm)
        except ValueError:
            raise self.error(f"unauthorized: {host} sent an invalid auth realm {realm!r}") from None
        self._check_realm(realm_url)
        name = self.registry.name
        scope = params.get("scope") or f"repository:{name.namespace}/{name.model}:{self.actions}"
        query = {"scope": scope, **({"service": params["service"]} if params.get("service") else {})}
        try:
            async with self.session.get(realm_url.update_query(query), allow_redirects=False,
                                        ssl=self._ssl()) as resp:
                if resp.status != 200:
                    raise self.error(f"unauthorized: the token service of {host} answered HTTP {resp.status}")
                raw = await read_capped(resp, MAX_TOKEN_RESPONSE, "token response", self.error)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise self.error(f"unauthorized: cannot reach the token service of {host}: {e}") from None
        return self._token_from(raw)

    def _check_realm(self, realm: URL) -> None:
        own = URL(self.registry.base)
        if (realm.host or "").lower() != (own.host or "").lower() or realm.explicit_port != own.explicit_port:
            raise self.error(
                f'refusing to send credentials to "{realm.origin() if realm.absolute else realm}": the auth realm '
                f"must be on the registry's own host ({self.registry.name.host})"
            )
        if realm.scheme not in ("http", "https") or (realm.scheme == "http" and self.registry.scheme == "https"):
            raise self.error(f'refusing the auth realm "{realm}": it would downgrade to plain http')

    def _token_from(self, raw: bytes) -> str:
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deeply
            doc = None
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise self.error(f"unauthorized: the token service of {self.registry.name.host} sent no usable token")
        return token

    def _own(self, url: str) -> bool:
        try:
            return URL(url).origin() == URL(self.registry.base).origin()
        except ValueError:
            return False

    def _ssl(self) -> bool | None:
        return None if self.registry.verify_tls else False


def parse_challenge(header: str) -> dict[str, str]:
    """Parameters of a ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` header ({} if not Bearer)."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return {}
    params = {}
    for key, quoted, bare in _CHALLENGE_PARAM.findall(rest):
        params[key.lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted else bare
    return params




def new_session() -> aiohttp.ClientSession:
    """A session for registry requests: bounded waits, no transparent decompression (gzip bombs)."""
    return aiohttp.ClientSession(timeout=_TIMEOUT, auto_decompress=False)


# ---- pull --------------------------------------------------------------------------------------


async def pull_ollama(
    store: Store,
    name: ModelName | str,
    progress: ProgressCallback | None = None,
    *,
    scheme: str | None = None,
    insecure: bool = False,
    downloads: Downloads | None = None,
) -> ModelName:
    """Pull ``name`` from its registry into ``store``, reporting Ollama's pull events.

    Raises NotFound (``pull model manifest: file does not exist``), BadRequest for an invalid name,
    manifest or protocol, PullError for network, auth, digest and disk failures. Nothing is listed
    unless every blob arrived and verified; a cancelled pull keeps its partial downloads for resume.
    """
    name = name if isinstance(name, ModelName) else ModelName.parse(name)
    registry = registry_for(name, scheme, insecure)
    downloads = downloads or DOWNLOADS
    await emit(progress, {"status": "pulling manifest"})
    async with new_session() as session:
        client = RegistryClient(session, registry, "pull")
        manifest = Manifest.parse(await fetch_manifest(client))
    layers = _unique_layers(manifest)
    missing = _missing_blobs(store, layers)
    try:
        with downloads.claim(digest for digest, _ in layers):
            await _download_layers(store, client, layers, missing, progress, downloads)
            await emit(progress, {"status": "verifying sha256 digest"})
            await emit(progress, {"status": "writing manifest"})
            removed = await _disk_safe(asyncio.to_thread(store.write_manifest, name, manifest), "the manifest")
    except Exception as e:  # not on cancel: then what arrived is kept for the next pull
        # A definitive failure (bad bytes, full disk) also drops the other layers' partials.
        discard = isinstance(e, DownloadDiscarded)
        await asyncio.to_thread(downloads.release_unused, store, missing, discard)
        raise
    if removed:
        await emit(progress, {"status": "removing unused layers"})
    await emit(progress, {"status": "success"})
    return name


async def fetch_manifest(client: RegistryClient) -> bytes:
    """The manifest bytes (capped, and checked against ``Docker-Content-Digest`` when sent)."""
    registry = client.registry
    try:
        resp = await client.request("GET", registry.manifest_url(), headers={"Accept": MANIFEST_V2})
        async with resp:
            if resp.status == 404:
                raise NotFound("pull model manifest: file does not exist")
            if resp.status == 401:
                raise client.unauthorized("pull model manifest")
            if resp.status != 200:
                raise PullError(f"pull model manifest: HTTP {resp.status} from {registry.name.host}")
            data = await read_capped(resp, MAX_MANIFEST_BYTES, "pull model manifest: the manifest")
            claimed = resp.headers.get("Docker-Content-Digest")
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        raise PullError(f"pull model manifest: cannot reach {registry.name.host}: {e or type(e).__name__}") from None
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if is_digest(claimed) and claimed != actual:
        raise PullError(f"pull model manifest: digest mismatch: the registry says {claimed}, the bytes are {actual}")
    return data


def _unique_layers(manifest: Manifest) -> list[tuple[str, int]]:
    seen: dict[str, int] = {}
    for layer in manifest.all_layers():
        if seen.setdefault(layer.digest, layer.size) != layer.size:
            raise BadRequest(f"invalid manifest: blob {layer.digest} is listed with two different sizes")
    return list(seen.items())


def _missing_blobs(store: Store, layers: list[tuple[str, int]]) -> list[str]:
    """Digests not in the store yet; refuses (InvalidManifest) a manifest that gives a blob we hold another
    size: the blob is verified by its digest, so the manifest is what is wrong, and its sizes would be
    believed by ``/api/tags``, disk-space checks and pushes."""
    missing = []
    for digest, size in layers:
        try:
            held = store.blob_size(digest)
        except FileNotFoundError:
            missing.append(digest)
            continue
        if held != size:
            raise size_mismatch(digest, size, held)
    return missing


async def _download_layers(store: Store, client: RegistryClient, layers: list[tuple[str, int]], missing: list[str],
                           progress: ProgressCallback | None, downloads: Downloads) -> None:
    registry = client.registry
    check_space(store, space_needed(store, layers), str(registry.name))
    for digest, size in layers:  # one bar per layer, in manifest order, before bytes start to flow
        done = 0 if digest in missing else size
        await emit(progress, {"status": f"pulling {digest[7:19]}", "digest": digest, "total": size, "completed": done})
    requests = [
        BlobRequest(registry.blob_url(digest), digest, size, client.auth_headers(), registry.verify_tls)
        for digest, size in layers if digest in missing
    ]
    await gather_cancelling(downloads.fetch(store, request, progress) for request in requests)


async def _disk_safe(awaitable: Any, what: str) -> Any:
    try:
        return await awaitable
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise PullError(f"no space left on device while writing {what}") from None
        raise
