"""``LLMHOST_SERVE_REGISTRY=1``: the daemon serves the read side of the registry protocol to peers."""

from __future__ import annotations

import hashlib

import pytest

from llmhost.registry.sources.ollama import pull_ollama
from llmhost.registry.store import Store
from tests.support.daemon_app import add_model
from tests.transfer.conftest import Events


@pytest.fixture
async def peer(tmp_path, daemon, tiny_gguf):
    """A daemon serving its registry, with ``tiny`` installed (under the default host)."""
    store = Store(tmp_path / "peer")
    add_model(store, "tiny", tiny_gguf, system="You are tiny.")
    client = await daemon(store, serve_registry=True)
    client.store = store
    return client


async def test_pull_from_a_peer_daemon_gives_identical_digests(tmp_path, peer, downloads):
    target = Store(tmp_path / "mine")
    events = Events()

    name = await pull_ollama(target, f"http://127.0.0.1:{peer.port}/library/tiny", events, scheme="http",
                             insecure=True, downloads=downloads)

    [theirs], [mine] = peer.store.list_models(), target.list_models()
    assert mine.digest == theirs.digest
    assert [layer.digest for layer in mine.manifest.all_layers()] == [
        layer.digest for layer in theirs.manifest.all_layers()]
    assert target.load(name).system == "You are tiny."
    assert events.statuses()[-1] == "success"


async def test_manifest_is_served_as_stored(peer):
    [entry] = peer.store.list_models()
    stored = peer.store.manifest_path(entry.name).read_bytes()

    resp = await peer.get("/v2/library/tiny/manifests/latest")
    head = await peer.head("/v2/library/tiny/manifests/latest")
    by_digest = await peer.get(f"/v2/library/tiny/manifests/sha256:{entry.digest}")

    assert resp.status == 200 and await resp.read() == stored
    assert resp.headers["Docker-Content-Digest"] == "sha256:" + hashlib.sha256(stored).hexdigest()
    assert resp.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(stored)
    assert by_digest.status == 200 and await by_digest.read() == stored
    assert await (await peer.get("/v2/")).json() == {}


async def test_blobs_support_range(peer, tiny_gguf):
    digest = "sha256:" + hashlib.sha256(tiny_gguf).hexdigest()

    whole = await peer.get(f"/v2/library/tiny/blobs/{digest}")
    part = await peer.get(f"/v2/library/tiny/blobs/{digest}", headers={"Range": "bytes=100-199"})
    head = await peer.head(f"/v2/library/tiny/blobs/{digest}")

    assert whole.status == 200 and await whole.read() == tiny_gguf
    assert part.status == 206 and await part.read() == tiny_gguf[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(tiny_gguf)}"
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(tiny_gguf)
    assert whole.headers["Docker-Content-Digest"] == digest


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", "/v2/library/nothing/manifests/latest", 404, "MANIFEST_UNKNOWN"),
    ("GET", "/v2/library/tiny/manifests/other", 404, "MANIFEST_UNKNOWN"),
    ("GET", "/v2/library/tiny/manifests/sha256:" + "0" * 64, 404, "MANIFEST_UNKNOWN"),
    ("GET", "/v2/library/tiny/manifests/.hidden", 400, "NAME_INVALID"),
    ("GET", "/v2/library/tiny/blobs/sha256:" + "0" * 64, 404, "BLOB_UNKNOWN"),
    ("GET", "/v2/library/tiny/blobs/sha256:abc", 400, "DIGEST_INVALID"),
    ("GET", "/v2/library/tiny/blobs/sha256:..%2F..%2Fmanifests", 400, "DIGEST_INVALID"),
    ("GET", "/v2/library/tiny/blobs/sha256-" + "0" * 64, 400, "DIGEST_INVALID"),
    ("POST", "/v2/library/tiny/blobs/uploads/", 405, "UNSUPPORTED"),
    ("PUT", "/v2/library/tiny/manifests/latest", 405, "UNSUPPORTED"),
    ("DELETE", "/v2/library/tiny/manifests/latest", 405, "UNSUPPORTED"),
], ids=["unknown-model", "unknown-tag", "unknown-digest", "bad-tag", "unknown-blob", "short-digest",
        "traversal-digest", "dash-digest", "upload", "put-manifest", "delete"])
async def test_errors_use_dockers_shape(peer, method, path, status, code):
    resp = await peer.request(method, path)

    assert resp.status == status
    assert (await resp.json())["errors"][0]["code"] == code


async def test_a_blob_of_another_repository_is_not_served(peer, tiny_gguf):
    digest = "sha256:" + hashlib.sha256(tiny_gguf).hexdigest()

    resp = await peer.get(f"/v2/library/other/blobs/{digest}")

    assert resp.status == 404 and (await resp.json())["errors"][0]["code"] == "BLOB_UNKNOWN"


async def test_off_unless_enabled(tmp_path, daemon, tiny_gguf):
    store = Store(tmp_path / "peer")
    add_model(store, "tiny", tiny_gguf)
    client = await daemon(store, serve_registry=False)

    assert (await client.get("/v2/")).status == 404
    assert (await client.get("/v2/library/tiny/manifests/latest")).status == 404
