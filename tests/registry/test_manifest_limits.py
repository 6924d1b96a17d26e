"""Manifests and JSON layers nested thousands deep, and layer sizes no model can have: 400s, not 500s."""

from __future__ import annotations

import json

import pytest

from llmhost.errors import InvalidManifest
from llmhost.registry import manifest as media
from llmhost.registry.create import create_model
from llmhost.registry.manifest import MAX_LAYER_SIZE, Manifest

from .helpers import write_tiny_gguf

DIGEST = "sha256:" + "a" * 64
DEEP = "[" * 100_000 + "]" * 100_000


def manifest_text(layer_size: int = 10, config: str | None = None) -> bytes:
    config = config or json.dumps({"mediaType": media.CONFIG, "digest": DIGEST, "size": 10})
    layers = json.dumps([{"mediaType": media.MODEL, "digest": DIGEST, "size": layer_size}])
    return (f'{{"schemaVersion":2,"mediaType":"{media.MANIFEST_V2}","config":{config},"layers":{layers}}}').encode()


NESTED = {
    "whole document": DEEP.encode(),
    "config": manifest_text(config=DEEP),
    "unknown field": manifest_text()[:-1] + b',"annotations":' + DEEP.encode() + b"}",
}


@pytest.mark.parametrize("data", NESTED.values(), ids=NESTED.keys())
def test_deeply_nested_manifest_is_a_400(data):
    with pytest.raises(InvalidManifest, match="nested too deeply") as err:
        Manifest.parse(data)
    assert err.value.status == 400


@pytest.mark.parametrize("size", [2**62, MAX_LAYER_SIZE + 1])
def test_absurd_layer_size_is_refused(size):
    with pytest.raises(InvalidManifest, match="larger than any model"):
        Manifest.parse(manifest_text(layer_size=size))


def test_largest_plausible_layer_size_is_accepted():
    assert Manifest.parse(manifest_text(layer_size=MAX_LAYER_SIZE)).layers[0].size == MAX_LAYER_SIZE


@pytest.fixture
def installed(store, tmp_path):
    digest, _ = store.import_file(write_tiny_gguf(tmp_path / "tiny.gguf"))
    create_model(store, "tiny", files={"m.gguf": digest})
    return store


def test_a_deeply_nested_manifest_in_the_store_is_skipped_and_a_400_to_load(installed):
    path = installed.manifest_path(installed.resolve("tiny"))
    path.with_name("deep").write_bytes(DEEP.encode())
    assert [entry.name.tag for entry in installed.list_models()] == ["latest"]
    with pytest.raises(InvalidManifest) as err:
        installed.load("tiny:deep")
    assert err.value.status == 400


def test_a_deeply_nested_config_blob_is_ignored(installed):
    manifest = installed.read_manifest("tiny")
    config = installed.write_bytes_blob(DEEP.encode(), media.CONFIG)
    installed.write_manifest("deepconfig", Manifest(config, manifest.layers))
    [entry] = [e for e in installed.list_models() if e.name.model == "deepconfig"]
    assert entry.details["family"] == ""
    assert installed.load("deepconfig").details()["family"] == "llama", "falls back to the GGUF metadata"
