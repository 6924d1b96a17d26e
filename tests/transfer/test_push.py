"""Pushing to a registry (the fake one, or a read-only peer daemon) and pulling back."""

from __future__ import annotations

import hashlib

import pytest

from llmhost.errors import BadRequest, ModelNotFound, PushError
from llmhost.registry.push import push_model
from llmhost.registry.sources.ollama import pull_ollama
from llmhost.registry.store import Store
from tests.support.daemon_app import add_model
from tests.transfer.conftest import Events


def blob_digests(store: Store) -> list[str]:
    return sorted(layer.digest for entry in store.list_models() for layer in entry.manifest.all_layers())


async def push(store: Store, name: str, events=None, **kw) -> None:
    await push_model(store, f"http://{name}", events, scheme="http", insecure=True, **kw)


async def test_push_then_pull_back_gives_identical_digests(tmp_path, registry, downloads, tiny_gguf):
    source = Store(tmp_path / "a")
    name = f"{registry.host}/myns/tiny:latest"
    add_model(source, name, tiny_gguf, system="You are tiny.", parameters={"temperature": 0.2})
    events = Events()

    await push(source, name, events)

    [pushed] = source.list_models()
    stored = source.manifest_path(pushed.name).read_bytes()
    assert registry.manifests[("myns", "tiny", "latest")] == stored
    statuses = events.statuses()
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    assert set(statuses[1:-2]) == {f"pushing {layer.digest[7:19]}" for layer in pushed.manifest.all_layers()}

    target = Store(tmp_path / "b")
    await pull_ollama(target, f"{registry.url}/myns/tiny", scheme="http", insecure=True, downloads=downloads)

    [pulled] = target.list_models()
    assert pulled.digest == pushed.digest == hashlib.sha256(stored).hexdigest()
    assert blob_digests(target) == blob_digests(source)
    assert target.load(pulled.name).system == "You are tiny."


async def test_blobs_the_registry_has_are_not_uploaded_again(tmp_path, registry, tiny_gguf):
    source = Store(tmp_path / "a")
    name = f"{registry.host}/myns/tiny:latest"
    add_model(source, name, tiny_gguf)
    await push(source, name)
    registry.reset_counts()
    events = Events()

    await push(source, name, events)

    assert not any(method in ("POST", "PATCH") for method, _ in registry.requests)
    progress = [e for e in events if "digest" in e]
    assert progress and all(e["completed"] == e["total"] for e in progress)


async def test_large_blobs_go_up_in_chunks_with_progress(tmp_path, registry, tiny_gguf):
    source = Store(tmp_path / "a")
    name = f"{registry.host}/myns/tiny:latest"
    add_model(source, name, tiny_gguf)
    events = Events()

    await push(source, name, events, chunk_size=64 << 10)

    patches = [path for method, path in registry.requests if method == "PATCH"]
    assert len(patches) >= len(tiny_gguf) // (64 << 10)
    model_digest = "sha256:" + hashlib.sha256(tiny_gguf).hexdigest()
    completed = [e["completed"] for e in events if e.get("digest") == model_digest]
    assert completed == sorted(completed) and completed[-1] == len(tiny_gguf) and len(completed) > 2
    assert registry.blobs[model_digest] == tiny_gguf


async def test_push_with_a_bearer_token(tmp_path, registry, tiny_gguf):
    source = Store(tmp_path / "a")
    name = f"{registry.host}/myns/tiny:latest"
    add_model(source, name, tiny_gguf)
    registry.token = "push-token"

    await push(source, name)

    assert registry.tokens_issued == 1 and ("myns", "tiny", "latest") in registry.manifests


async def test_push_of_a_missing_model(store, registry):
    with pytest.raises(ModelNotFound):
        await push(store, f"{registry.host}/myns/nothing:latest")


async def test_push_over_plain_http_needs_insecure(store, registry, tiny_gguf):
    add_model(store, f"{registry.host}/myns/tiny", tiny_gguf)
    with pytest.raises(BadRequest, match="insecure protocol http"):
        await push_model(store, f"{registry.host}/myns/tiny", scheme="http")


async def test_a_peer_daemon_serving_its_registry_is_read_only(store, daemon, tiny_gguf):
    peer = await daemon(Store(store.root.parent / "peer"), serve_registry=True)
    name = f"127.0.0.1:{peer.port}/library/tiny:latest"
    add_model(store, name, tiny_gguf)

    read_only = r"starting a blob upload: .* answered HTTP 405: this llmhost registry is read-only"
    with pytest.raises(PushError, match=read_only):
        await push(store, name)
