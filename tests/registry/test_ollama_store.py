"""An Ollama store used in place: read as Ollama wrote it, changed only in Ollama's layout.

The fixture (tests/support/ollama_store.py) is written as Ollama writes a store; these tests read
it with llmhost's Store, copy and delete with reference-counted blobs, create a model on top of a
library model, and check that what llmhost wrote is what Ollama reads (``ollama_reads``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from llmhost.registry.capabilities import capabilities
from llmhost.registry.create import create_model
from llmhost.registry.modelfile import parse_modelfile, render_modelfile
from llmhost.registry.store import Store
from tests.support.ollama_store import (
    CHATTY_MESSAGES,
    CHATTY_SYSTEM,
    CHATTY_TEMPLATE,
    LEGACY_TEMPLATE,
    LICENSE,
    build_ollama_store,
    store_files,
)

OLLAMA_LAYERS = {"model", "template", "system", "params", "license", "messages", "adapter", "projector", "prompt"}


@pytest.fixture
def ollama(tmp_path: Path, tiny_gguf: Path):
    root = tmp_path / ".ollama" / "models"
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"GGUF not really a LoRA")
    projector = tmp_path / "mmproj.gguf"
    projector.write_bytes(b"GGUF not really a projector")
    models = build_ollama_store(root, tiny_gguf, adapter=adapter, projector=projector)
    return root, models


def ollama_reads(root: Path, manifest_path: Path) -> dict:
    """What Ollama's GetModel checks of a model: a schema-2 manifest whose config and layer blobs
    exist under ``blobs/sha256-<hex>`` with those digests and sizes, a ConfigV2 config, JSON params
    and messages, text layers; returns the layers' contents by kind."""
    manifest = json.loads(manifest_path.read_bytes())
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    contents = {}
    for layer in [manifest["config"], *manifest["layers"]]:
        blob = root / "blobs" / layer["digest"].replace(":", "-")
        data = blob.read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"] and len(data) == layer["size"]
        kind = layer["mediaType"].rsplit(".", 1)[-1]
        contents.setdefault(kind, []).append(data)
    assert manifest["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    config = json.loads(contents.pop("v1+json")[0])
    assert {"model_format", "model_family", "model_families", "model_type", "file_type", "architecture",
            "os"} <= set(config)
    assert set(contents) <= OLLAMA_LAYERS
    for kind in ("params", "messages"):
        for data in contents.get(kind, []):
            json.loads(data)
    return contents


def test_every_model_is_listed_with_its_details(ollama):
    root, _ = ollama
    entries = {entry.name.display(): entry for entry in Store(root).list_models()}
    assert set(entries) == {"chatty:latest", "legacy:7b", "hf.co/someone/tiny-GGUF:Q4_K_M", "tuned:latest",
                            "seer:latest"}
    details = entries["legacy:7b"].details
    assert (details["family"], details["parameter_size"], details["quantization_level"]) == ("llama", "1.1M", "F32")


def test_library_layers_are_read(ollama):
    root, _ = ollama
    chatty = Store(root).load("chatty")
    assert chatty.template == CHATTY_TEMPLATE and chatty.system == CHATTY_SYSTEM
    assert chatty.parameters == {"num_ctx": 2048, "stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.6}
    assert chatty.messages == CHATTY_MESSAGES and chatty.license == [LICENSE]
    assert capabilities(chatty) == ["completion", "tools", "thinking"]
    assert Store(root).load("legacy:7b").template == LEGACY_TEMPLATE
    assert capabilities(Store(root).load("legacy:7b")) == ["completion"]
    assert Store(root).load("hf.co/someone/tiny-GGUF:Q4_K_M").template is None  # the GGUF's own applies
    assert len(Store(root).load("tuned").adapters) == 1
    seer = Store(root).load("seer")  # a projector is the images issue's: here it only must not break
    assert seer.projector_path is not None and capabilities(seer) == ["completion", "vision"]
    assert "FROM " in render_modelfile(seer)


def test_the_shown_modelfile_recreates_the_model(ollama):
    root, _ = ollama
    chatty = Store(root).load("chatty")
    text = render_modelfile(chatty)
    assert f'\nTEMPLATE """{CHATTY_TEMPLATE}"""\n' in text
    assert "\nPARAMETER stop <|im_start|>\nPARAMETER stop <|im_end|>\nPARAMETER temperature 0.6\n" in text
    assert text.index("LICENSE") < text.index("MESSAGE user Who are you?") < text.index("MESSAGE assistant")
    parsed = parse_modelfile(text)
    assert (parsed.template, parsed.system, parsed.parameters, parsed.messages, parsed.license) == (
        chatty.template, chatty.system, chatty.parameters, chatty.messages, chatty.license)


def test_reading_writes_nothing(ollama):
    root, _ = ollama
    before = store_files(root)
    store = Store(root)
    store.list_models()
    for name in ("chatty", "legacy:7b", "hf.co/someone/tiny-GGUF:Q4_K_M"):
        render_modelfile(store.load(name))
    assert store_files(root) == before


def test_copy_shares_every_blob_and_the_manifest_bytes(ollama):
    root, models = ollama
    blobs = set((root / "blobs").iterdir())
    Store(root).copy("chatty", "mine:v1")
    copied = root / "manifests" / "registry.ollama.ai" / "library" / "mine" / "v1"
    assert copied.read_bytes() == models["chatty"].manifest_path.read_bytes()
    assert set((root / "blobs").iterdir()) == blobs


def test_delete_keeps_blobs_other_models_use(ollama):
    root, models = ollama
    store = Store(root)
    store.copy("chatty", "mine")
    chatty_only = {models["chatty"].layers[k] for k in ("template", "system", "params", "license", "messages")}
    assert store.delete("chatty") == []  # the copy still uses every blob
    assert not models["chatty"].manifest_path.exists()
    store.delete("tuned")
    removed = set(store.delete("mine"))
    assert removed == chatty_only, "the GGUF and the shared config stay for legacy and plain"
    assert (root / "blobs" / models["legacy"].layers["model"].replace(":", "-")).exists()
    store.delete("legacy:7b")
    store.delete("seer")
    store.delete("hf.co/someone/tiny-GGUF:Q4_K_M")
    assert list((root / "blobs").iterdir()) == [] and list((root / "manifests").iterdir()) == []


def test_a_model_created_on_a_library_model_is_what_ollama_reads(ollama):
    root, models = ollama
    store = Store(root)
    create_model(store, "derived", from_="chatty", system="You are Derived.", parameters={"temperature": 0.2})
    path = root / "manifests" / "registry.ollama.ai" / "library" / "derived" / "latest"
    contents = ollama_reads(root, path)
    assert contents["template"] == [CHATTY_TEMPLATE.encode()] and contents["system"] == [b"You are Derived."]
    assert json.loads(contents["params"][0]) == {"num_ctx": 2048, "stop": ["<|im_start|>", "<|im_end|>"],
                                                  "temperature": 0.2}
    assert contents["license"] == [LICENSE.encode()]
    assert {p.name for p in root.iterdir()} == {"blobs", "manifests"}, "nothing outside Ollama's layout"
    for model in models.values():  # and the library models are as Ollama wrote them
        ollama_reads(root, model.manifest_path)


def test_a_bad_template_is_refused_at_create_with_its_position(ollama):
    root, _ = ollama
    before = store_files(root)
    with pytest.raises(Exception, match=r"invalid Go template TEMPLATE at 2:4: function \"bogus\" not defined") as e:
        create_model(Store(root), "broken", from_="chatty", template="{{ .System }}\n{{ bogus .Prompt }}")
    assert e.value.status == 400
    assert store_files(root) == before
