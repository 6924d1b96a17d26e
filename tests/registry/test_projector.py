"""A vision model's projector (``mmproj``) in the store: from /api/create files, a Modelfile's second
FROM, an Ollama registry and a Hugging Face repository (the fake Hub, conftest.py's ``hub``); and what
``capabilities`` says."""

from __future__ import annotations

import re
from pathlib import Path

import gguf
import pytest

from llmhost.errors import BadRequest, InvalidModelFile, PullError
from llmhost.registry import manifest as media
from llmhost.registry.capabilities import capabilities
from llmhost.registry.create import create_model
from llmhost.registry.modelfile import parse_modelfile, render_modelfile
from llmhost.registry.sources.hf import GGUFModel, RepoFile, choose_projector, pull_hf
from llmhost.registry.store import Store
from tests.support.tiny_mmproj import write_tiny_mmproj

from .helpers import sha256_of, snapshot, write_tiny_gguf


@pytest.fixture(scope="module")
def projector_bytes(tmp_path_factory) -> bytes:
    return write_tiny_mmproj(tmp_path_factory.mktemp("mmproj") / "mmproj.gguf").read_bytes()


@pytest.fixture
def uploaded(store, tiny_gguf, tmp_path):
    """Digests of the tiny model and a tiny projector in the store, as ``llm create`` uploads them."""
    projector = write_tiny_mmproj(tmp_path / "mmproj-tiny-f16.gguf")
    return store.import_file(tiny_gguf)[0], store.import_file(projector)[0]


def layer_types(store: Store, name: str) -> list[tuple[str, str]]:
    return [(layer.media_type, layer.digest) for layer in store.read_manifest(name).layers]


# ---- /api/create and Modelfiles ----------------------------------------------------------------


def test_a_projector_file_beside_the_model_becomes_the_projector_layer(store, uploaded):
    model, projector = uploaded
    create_model(store, "seer", files={"mmproj-tiny-f16.gguf": projector, "tiny.gguf": model})
    assert layer_types(store, "seer") == [(media.MODEL, model), (media.PROJECTOR, projector)]
    record = store.load("seer")
    assert record.projector_path == store.blob_path(projector)
    assert capabilities(record) == ["completion", "vision"]


def test_from_an_installed_model_with_a_projector_file_adds_vision(store, uploaded, tmp_path):
    """``FROM tiny`` + ``FROM ./mmproj.gguf``: the base's layers, and the projector (replacing the base's)."""
    model, projector = uploaded
    create_model(store, "base", files={"tiny.gguf": model}, system="Look closely.")
    create_model(store, "seer", from_="base", files={"mmproj.gguf": projector})
    seer = store.load("seer")
    assert (seer.system, seer.runner_key, seer.projector_path) == ("Look closely.", model, store.blob_path(projector))
    assert capabilities(store.load("base")) == ["completion"], "the base is untouched"

    other = store.import_file(write_tiny_mmproj(tmp_path / "other.gguf", seed=2))[0]
    create_model(store, "seer2", from_="seer", files={"other.gguf": other})
    assert [d for t, d in layer_types(store, "seer2") if t == media.PROJECTOR] == [other]


REFUSED = {
    "a model beside from": (dict(from_="base", files={"tiny.gguf": "model"}), BadRequest,
                            'specify either "from" or "files", not both: "tiny.gguf" is a model'),
    "two projectors": (dict(files={"tiny.gguf": "model", "a.gguf": "projector", "b.gguf": "other"}),
                       BadRequest, 'more than one projector in "files" ("b.gguf")'),
    "only a projector": (dict(files={"a.gguf": "projector"}), BadRequest,
                         '"files" holds no GGUF model (only projectors)'),
    "a projector without weights": (dict(files={"tiny.gguf": "model", "a.gguf": "empty"}), InvalidModelFile,
                                    'invalid projector file "a.gguf": it holds no tensors'),
}


def write_weightless_projector(path: Path) -> Path:
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("kwargs, error, message", REFUSED.values(), ids=REFUSED.keys())
def test_refused_projector_layouts_leave_the_store_as_it_was(store, uploaded, tmp_path, kwargs, error, message):
    model, projector = uploaded
    other = store.import_file(write_tiny_mmproj(tmp_path / "other.gguf", seed=2))[0]
    empty = store.import_file(write_weightless_projector(tmp_path / "empty.gguf"))[0]
    digests = {"model": model, "projector": projector, "other": other, "empty": empty}
    create_model(store, "base", files={"tiny.gguf": model})
    before = snapshot(store.root)
    if "files" in kwargs:
        kwargs = {**kwargs, "files": {name: digests[which] for name, which in kwargs["files"].items()}}
    with pytest.raises(error, match=re.escape(message)):
        create_model(store, "seer", **kwargs)
    assert snapshot(store.root) == before


def test_a_second_from_line_is_kept_and_show_renders_the_projector_as_one(store, uploaded):
    parsed = parse_modelfile("FROM ./tiny.gguf\nFROM ./mmproj.gguf\nSYSTEM hi\n")
    assert (parsed.from_, parsed.extra_from) == ("./tiny.gguf", ["./mmproj.gguf"])

    model, projector = uploaded
    create_model(store, "seer", files={"tiny.gguf": model, "mmproj.gguf": projector})
    record = store.load("seer")
    rendered = parse_modelfile(render_modelfile(record))  # Ollama's order: FROM model, ADAPTERs, FROM projector
    assert (rendered.from_, rendered.extra_from) == (str(record.model_path), [str(record.projector_path)])


# ---- pulls -------------------------------------------------------------------------------------


async def test_an_ollama_registry_pull_keeps_the_projector_layer(tmp_path, tiny_gguf, projector_bytes):
    from llmhost.registry.download import Downloads
    from llmhost.registry.sources.ollama import pull_ollama
    from tests.transfer.conftest import FAST
    from tests.transfer.fake_registry import MODEL, FakeRegistry

    store = Store(tmp_path / "models")
    registry = await FakeRegistry().start()
    try:
        registry.add_model("library", "seer", "latest",
                           [(MODEL, tiny_gguf.read_bytes()), (media.PROJECTOR, projector_bytes)])
        name = await pull_ollama(store, f"{registry.url}/library/seer", scheme="http", insecure=True,
                                 downloads=Downloads(FAST))
    finally:
        await registry.close()
    record = store.load(name)
    assert record.projector_path is not None and record.projector_path.read_bytes() == projector_bytes
    assert capabilities(record) == ["completion", "vision"]


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("hf-models")
    return {q: write_tiny_gguf(root / f"{q}.gguf", name=f"tiny {q}").read_bytes() for q in ("Q4_K_M", "Q8_0")}


@pytest.fixture(scope="module")
def projectors(tmp_path_factory) -> dict[str, bytes]:
    """Distinct projectors by precision (their digests tell which one was pulled)."""
    root = tmp_path_factory.mktemp("hf-projectors")
    return {p: write_tiny_mmproj(root / f"{p}.gguf", seed=seed).read_bytes()
            for seed, p in enumerate(("F16", "BF16", "Q8_0", "F32"))}


def projector_digest(store: Store, name: str) -> str | None:
    return next((d for t, d in layer_types(store, name) if t == media.PROJECTOR), None)


async def test_a_hugging_face_pull_takes_the_projector_beside_the_model(store, hub, model_bytes, projectors):
    hub.add("org/seer-GGUF", {"seer-Q4_K_M.gguf": model_bytes["Q4_K_M"], "seer-Q8_0.gguf": model_bytes["Q8_0"],
                              "mmproj-seer-F16.gguf": projectors["F16"], "mmproj-seer-Q8_0.gguf": projectors["Q8_0"]})
    events = []
    await pull_hf(store, "hf.co/org/seer-GGUF", events.append)
    name = "hf.co/org/seer-GGUF"
    assert layer_types(store, name) == [(media.MODEL, sha256_of(model_bytes["Q4_K_M"])),
                                        (media.PROJECTOR, sha256_of(projectors["F16"]))]
    assert projector_digest(store, name) == sha256_of(projectors["F16"]), "no Q4_K_M projector: F16"
    assert capabilities(store.load(name)) == ["completion", "vision"]
    assert f"pulling {sha256_of(projectors['F16'])[7:19]}" in {e["status"] for e in events}
    assert store.load(name).config["source"]["projector"] == "mmproj-seer-F16.gguf"

    await pull_hf(store, "hf.co/org/seer-GGUF:Q8_0")
    assert projector_digest(store, "hf.co/org/seer-GGUF:Q8_0") == sha256_of(projectors["Q8_0"]), \
        "the model's own precision"


CHOICES = {
    "the model's precision": (["mmproj-F16.gguf", "mmproj-Q8_0.gguf"], "m-Q8_0.gguf", "mmproj-Q8_0.gguf"),
    "else F16": (["mmproj-BF16.gguf", "mmproj-F16.gguf", "mmproj-F32.gguf"], "m-Q4_K_M.gguf", "mmproj-F16.gguf"),
    "fp16 is F16": (["mmproj-model-fp32.gguf", "mmproj-model-fp16.gguf"], "m-Q4_K_M.gguf", "mmproj-model-fp16.gguf"),
    "else the first by name": (["mmproj-F32.gguf", "mmproj-BF16.gguf"], "m-Q4_K_M.gguf", "mmproj-BF16.gguf"),
    "the model's folder first": (["mmproj-F16.gguf", "Q4/mmproj-BF16.gguf"], "Q4/m-Q4_K_M.gguf", "Q4/mmproj-BF16.gguf"),
    "none: text only": ([], "m-Q4_K_M.gguf", None),
    "never outside the repository": (["../mmproj-F16.gguf"], "m-Q4_K_M.gguf", None),
}


@pytest.mark.parametrize("names, model, chosen", CHOICES.values(), ids=CHOICES.keys())
def test_which_projector_goes_with_the_model(names, model, chosen):
    files = [RepoFile(name, 1, None) for name in names]
    found = choose_projector(files, GGUFModel((RepoFile(model, 1, None),), 1))
    assert (found.path if found else None) == chosen


async def test_a_repo_without_a_projector_pulls_a_text_model(store, hub, model_bytes):
    hub.add("org/plain", {"plain-Q4_K_M.gguf": model_bytes["Q4_K_M"]})
    await pull_hf(store, "hf.co/org/plain")
    assert store.load("hf.co/org/plain").projector_path is None
    assert [t for t, _ in layer_types(store, "hf.co/org/plain")] == [media.MODEL]


async def test_an_mmproj_file_that_is_a_model_is_refused(store, hub, model_bytes):
    hub.add("org/odd", {"odd-Q4_K_M.gguf": model_bytes["Q4_K_M"], "mmproj-odd-f16.gguf": model_bytes["Q8_0"]})
    with pytest.raises(PullError, match=re.escape("org/odd/mmproj-odd-f16.gguf is named as a projector")):
        await pull_hf(store, "hf.co/org/odd")
    assert store.list_models() == [] and not any(p.startswith("manifests") for p in snapshot(store.root))
