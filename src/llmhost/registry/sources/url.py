"""Pulling one GGUF file from a plain URL: ``https://…/<file>.gguf`` (``http://`` only with insecure).

The file becomes the model layer (its digest is computed while it downloads, with the same ranged,
resumable downloader as registry pulls); template and parameters come from the GGUF itself.
The model is named ``<url host>/library/<file name without .gguf>:latest``.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import unquote

from yarl import URL

from llmhost.errors import BadRequest, InvalidModelFile, PullError
from llmhost.registry.create import manifest_for_gguf
from llmhost.registry.download import DOWNLOADS, BlobRequest, Downloads, ProgressCallback, emit
from llmhost.registry.names import DEFAULT_NAMESPACE, DEFAULT_TAG, ModelName
from llmhost.registry.store import Store

_NOT_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def is_model_url(text: str) -> bool:
    """Whether a ``/api/pull`` model field is a file URL (http(s), path ending in ``.gguf``)."""
    if not isinstance(text, str) or not text.strip().lower().startswith(("http://", "https://")):
        return False
    try:
        return URL(text.strip()).path.lower().endswith(".gguf")
    except ValueError:
        return False


def name_for_url(url: str) -> ModelName:
    """``https://example.com/m/Tiny-Q4_K_M.gguf`` → ``example.com/library/Tiny-Q4_K_M:latest``."""
    parsed = URL(url)
    host = (parsed.host or "").lower()
    if parsed.explicit_port is not None:
        host += f":{parsed.explicit_port}"
    stem = unquote(parsed.path.rsplit("/", 1)[-1])[: -len(".gguf")]
    model = _NOT_NAME.sub("-", stem).lstrip(".-")[:80].rstrip(".-") or "model"
    try:
        return ModelName(host, DEFAULT_NAMESPACE, model, DEFAULT_TAG)
    except BadRequest:
        raise BadRequest(f'cannot name a model after "{url}": its host "{host}" is not a valid name part') from None


async def pull_url(
    store: Store,
    url: str,
    progress: ProgressCallback | None = None,
    *,
    insecure: bool = False,
    downloads: Downloads | None = None,
) -> ModelName:
    """Download the GGUF at ``url`` and install it as ``name_for_url(url)``; returns that name.

    Raises BadRequest for a non-GGUF URL or plain http without ``insecure``, PullError for network,
    disk and file-format failures (the store is then unchanged; a cancelled pull resumes later).
    """
    url = url.strip()
    if not is_model_url(url):
        raise BadRequest(f'"{url}" is not a URL of a .gguf file')
    if url.lower().startswith("http://") and not insecure:
        raise BadRequest('insecure protocol http: pass --insecure ("insecure": true) to download over plain http')
    name = name_for_url(url)
    downloads = downloads or DOWNLOADS
    label = name.model[:40]
    request = BlobRequest(url, None, None, {}, verify_tls=not insecure, label=label)
    digest, _ = await downloads.fetch(store, request, progress)
    await emit(progress, {"status": "verifying sha256 digest"})
    source = {"type": "url", "url": str(URL(url).with_user(None).with_query(None))}
    try:
        with downloads.claim([digest]):
            manifest = await asyncio.to_thread(manifest_for_gguf, store, digest, extra_config={"source": source})
            await emit(progress, {"status": "writing manifest"})
            removed = await asyncio.to_thread(store.write_manifest, name, manifest)
    except InvalidModelFile as e:
        await asyncio.to_thread(downloads.release_unused, store, [digest])
        raise PullError(f"{url} is not a usable GGUF model: {e}") from None
    if removed:
        await emit(progress, {"status": "removing unused layers"})
    await emit(progress, {"status": "success"})
    return name
