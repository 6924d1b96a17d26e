import pytest

from llmhost.errors import BadRequest, InvalidDigest, InvalidModelFile, InvalidName, InvalidOption, ModelNotFound
from llmhost.registry import manifest as media
from llmhost.registry.create import create_model

from .helpers import CHAT_TEMPLATE, snapshot


@pytest.fixture
def uploaded(store, tiny_gguf):
    """The tiny GGUF as the CLI would upload it (POST /api/blobs/:digest); returns its digest."""
    digest, _ = store.import_file(tiny_gguf)
    return digest


def test_create_from_uploaded_file(store, uploaded):
    events = []
    name = create_model(
        store, "mine", files={"tiny.gguf": uploaded}, system="Be brief.", license="MIT",
        parameters={"temperature": 0.2, "stop": "<|im_end|>"},
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        progress=events.append,
    )
    assert name.display() == "mine:latest"
    statuses = [e["status"] for e in events]
    assert statuses[0] == "parsing GGUF"
    assert f"using existing layer {uploaded}" in statuses
    assert sum(s.startswith("creating new layer sha256:") for s in statuses) == 4  # system, messages, license, params
    assert statuses[-2:] == ["writing manifest", "success"]
    record = store.load("mine")
    assert record.model_path == store.blob_path(uploaded)
    assert record.system == "Be brief." and record.template is None and record.chat_template == CHAT_TEMPLATE
    assert record.parameters == {"temperature": 0.2, "stop": ["<|im_end|>"]}
    assert record.messages[1] == {"role": "assistant", "content": "hello"}
    assert record.license == ["MIT"]
    assert record.details() == {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                                "parameter_size": "78K", "quantization_level": "F32"}
    assert record.config["model_format"] == "gguf" and record.config["os"] == "linux"
    assert store.list_models()[0].details == record.details()


def test_create_from_model_reuses_layers_and_merges_parameters(store, uploaded):
    create_model(store, "base", files={"m.gguf": uploaded}, system="old", template="T1",
                 parameters={"stop": ["A"], "top_k": 10})
    events = []
    create_model(store, "derived:v2", from_="BASE", system="new", parameters={"stop": ["B"], "top_k": 5},
                 progress=events.append)
    derived, base = store.load("derived:v2"), store.load("base")
    assert derived.system == "new" and derived.template == "T1"
    assert derived.parameters == {"stop": ["A", "B"], "top_k": 5}
    assert derived.runner_key == base.runner_key == uploaded  # one runner serves both
    assert derived.details()["parent_model"] == "base:latest"
    assert f"using existing layer {uploaded}" in [e["status"] for e in events]
    assert base.system == "old"  # the base is untouched


def test_recreating_a_model_drops_its_old_layers(store, uploaded):
    create_model(store, "m", files={"m.gguf": uploaded}, system="first")
    old_system = store.read_manifest("m").find(media.SYSTEM).digest
    create_model(store, "m", from_="m", system="second")
    assert store.load("m").system == "second"
    assert not store.has_blob(old_system) and store.has_blob(uploaded)


def bad_requests(uploaded_digest: str, junk_digest: str, truncated_digest: str) -> dict:
    absent = "sha256:" + "e" * 64
    return {
        "absolute path": (dict(files={"/etc/passwd": uploaded_digest}), BadRequest, "file path must be relative"),
        "parent traversal": (dict(files={"../../x.gguf": uploaded_digest}), BadRequest, "file path must be relative"),
        "windows absolute": (dict(files={"C:\\m\\x.gguf": uploaded_digest}), BadRequest, "file path must be relative"),
        "blob not uploaded": (dict(files={"x.gguf": absent}), BadRequest, f'blob "{absent}" for file "x.gguf" not found'),
        "traversal digest": (dict(files={"x.gguf": "sha256:../../x"}), InvalidDigest, "invalid digest"),
        "not a GGUF": (dict(files={"x.gguf": junk_digest}), InvalidModelFile, "not a GGUF file"),
        "truncated GGUF": (dict(files={"x.gguf": truncated_digest}), InvalidModelFile, "truncated GGUF file"),
        "safetensors": (dict(files={"model.safetensors": uploaded_digest}), BadRequest, "only GGUF models"),
        "two models": (dict(files={"a.gguf": uploaded_digest, "b.gguf": uploaded_digest}), BadRequest, "more than one"),
        "no source": (dict(), BadRequest, 'neither "from" nor "files"'),
        "both sources": (dict(from_="x", files={"a.gguf": uploaded_digest}), BadRequest, "not both"),
        "unknown base model": (dict(from_="nothing"), ModelNotFound, "model 'nothing:latest' not found"),
        "invalid base name": (dict(from_="../x"), InvalidName, "invalid model name"),
        "bad message role": (dict(files={"a.gguf": uploaded_digest}, messages=[{"role": "robot", "content": "x"}]),
                             BadRequest, "role must be one of"),
        "bad parameter type": (dict(files={"a.gguf": uploaded_digest}, parameters={"top_k": "many"}),
                               InvalidOption, 'option "top_k" must be of type integer'),
        "bad license": (dict(files={"a.gguf": uploaded_digest}, license=[1]), BadRequest, "license"),
    }


BAD_IDS = list(bad_requests("", "", ""))


@pytest.mark.parametrize("case", BAD_IDS)
def test_bad_create_requests_leave_the_store_unchanged(store, uploaded, tiny_gguf, case):
    junk, _ = store.write_blob([b"definitely not a model" * 100])
    truncated, _ = store.write_blob([tiny_gguf.read_bytes()[:-5000]])
    kwargs, error, message = bad_requests(uploaded, junk, truncated)[case]
    before = snapshot(store.root)
    events = []
    with pytest.raises(error) as err:
        create_model(store, "new-model", progress=events.append, **kwargs)
    assert message in str(err.value)
    assert err.value.status in (400, 404)
    assert snapshot(store.root) == before
    assert "success" not in [e["status"] for e in events]


def test_invalid_target_name_is_refused(store, uploaded):
    with pytest.raises(InvalidName):
        create_model(store, "a/b/c/d/e", files={"m.gguf": uploaded})


@pytest.mark.model
def test_create_from_the_real_model_reports_ollama_details(store, smollm2_path):
    digest, _ = store.import_file(smollm2_path)
    create_model(store, "smollm2:135m", files={smollm2_path.name: digest})
    entry = store.list_models()[0]
    assert entry.details == {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                             "parameter_size": "134.52M", "quantization_level": "Q4_1"}
    record = store.load("smollm2:135m")
    assert "<|im_start|>" in record.chat_template
    assert record.size == entry.size > smollm2_path.stat().st_size
