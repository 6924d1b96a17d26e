"""Registry manifests that lie about layer sizes (to blobs we hold, or to any disk) or are nested thousands
deep are refused with a 400 before anything is downloaded or installed."""

from __future__ import annotations

import json

import pytest

from llmhost.errors import InvalidManifest
from llmhost.registry.download import BlobRequest
from llmhost.registry.store import Store
from tests.transfer.conftest import files_under
from tests.transfer.fake_registry import MODEL, FakeRegistry, sha
from tests.transfer.test_pull import pull


def publish_with_sizes(registry: FakeRegistry, model: str, sizes: dict[str, int]) -> None:
    """Re-publish ``library/<model>:latest`` with the sizes of some blobs (by digest) replaced."""
    doc = json.loads(registry.manifests[("library", model, "latest")])
    for item in [doc["config"], *doc["layers"]]:
        item["size"] = sizes.get(item["digest"], item["size"])
    registry.manifests[("library", model, "latest")] = json.dumps(doc).encode()


@pytest.fixture
async def held(store: Store, registry: FakeRegistry, downloads, tiny_gguf) -> Store:
    """``tiny`` pulled, so its blobs are held; ``liar`` published with the same blobs."""
    registry.add_model("library", "tiny", "latest", [(MODEL, tiny_gguf)])
    registry.add_model("library", "liar", "latest", [(MODEL, tiny_gguf)])
    await pull(store, registry, downloads)
    registry.reset_counts()
    return store


@pytest.mark.parametrize("size", [12345, 0])
async def test_a_held_blob_listed_with_another_size_is_refused(held, registry, downloads, tiny_gguf, size):
    publish_with_sizes(registry, "liar", {sha(tiny_gguf): size})
    before = files_under(held.root)
    with pytest.raises(InvalidManifest) as err:
        await pull(held, registry, downloads, model="library/liar")
    assert err.value.status == 400
    assert f"with {size} bytes, but that blob has {len(tiny_gguf)} bytes" in str(err.value)
    assert files_under(held.root) == before, "nothing installed or downloaded"
    assert [entry.name.model for entry in held.list_models()] == ["tiny"]


async def test_a_held_config_blob_listed_with_another_size_is_refused(held, registry, downloads):
    config = json.loads(registry.manifests[("library", "liar", "latest")])["config"]["digest"]
    publish_with_sizes(registry, "liar", {config: 12345})
    with pytest.raises(InvalidManifest, match="12345 bytes"):
        await pull(held, registry, downloads, model="library/liar")


@pytest.mark.parametrize("model", ["liar", "new"])
async def test_an_absurd_size_is_refused_before_any_download(held, registry, downloads, tiny_gguf, model):
    if model == "new":  # a blob we do not hold
        registry.add_model("library", "new", "latest", [(MODEL, tiny_gguf + b"x")])
    digest = json.loads(registry.manifests[("library", model, "latest")])["layers"][0]["digest"]
    publish_with_sizes(registry, model, {digest: 2**62})
    with pytest.raises(InvalidManifest, match="larger than any model"):
        await pull(held, registry, downloads, model=f"library/{model}")
    assert sum(registry.served.values()) == 0


async def test_the_downloader_refuses_a_held_blob_of_another_size(held, registry, downloads, tiny_gguf):
    digest = sha(tiny_gguf)
    request = BlobRequest(f"{registry.url}/v2/library/tiny/blobs/{digest}", digest, 12345)
    with pytest.raises(InvalidManifest, match="12345 bytes"):
        await downloads.fetch(held, request)


async def test_a_deeply_nested_manifest_is_a_400(store, registry, downloads):
    registry.manifests[("library", "deep", "latest")] = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(InvalidManifest, match="nested too deeply") as err:
        await pull(store, registry, downloads, model="library/deep")
    assert err.value.status == 400 and files_under(store.root) == []
