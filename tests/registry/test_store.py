import io
import os
import time
from datetime import timezone

import pytest

from llmhost.errors import DigestMismatch, InvalidDigest, MissingBlob, ModelNotFound, NoSpace
from llmhost.registry import manifest as media
from llmhost.registry.manifest import Layer, Manifest
from llmhost.registry.names import ModelName
from llmhost.registry.store import Store
from tests.support.tmpfs import fill, small_disk  # noqa: F401

from .helpers import sha256_of, snapshot


def blob(store: Store, data: bytes, media_type: str = media.MODEL) -> Layer:
    digest, size = store.write_blob([data])
    return Layer(media_type, digest, size)


def install(store: Store, name: str, *payloads: bytes) -> Manifest:
    config = store.write_json_blob({"model_format": "gguf", "model_family": "llama"}, media.CONFIG)
    manifest = Manifest(config, tuple(blob(store, p) for p in payloads))
    store.write_manifest(name, manifest)
    return manifest


def leftovers(store: Store) -> list[str]:
    return [p.name for p in store.root.rglob(".tmp-*")]


# ---- blobs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", [
    pytest.param(lambda data: [data[:3], b"", data[3:]], id="chunks"),
    pytest.param(lambda data: io.BytesIO(data), id="file object"),
])
def test_write_blob_stores_content_under_its_digest(store, source):
    data = b"hello, model"
    digest, size = store.write_blob(source(data))
    assert (digest, size) == (sha256_of(data), len(data))
    assert store.blob_path(digest).read_bytes() == data
    assert store.blob_path(digest).name == "sha256-" + digest[7:]
    assert store.has_blob(digest) and not leftovers(store)


def test_write_blob_verifies_expected_digest(store):
    data = b"payload"
    assert store.write_blob([data], sha256_of(data)) == (sha256_of(data), 7)


def test_digest_mismatch_keeps_nothing(store):
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch) as err:
        store.write_blob([b"payload"], wrong)
    assert str(err.value) == f'digest mismatch, expected "{wrong}", got "{sha256_of(b"payload")}"'
    assert err.value.status == 400
    assert not store.has_blob(wrong) and not store.has_blob(sha256_of(b"payload"))
    assert not leftovers(store) and not any(store.blobs_dir.iterdir())


def test_interrupted_write_leaves_no_temp_file(store):
    def chunks():
        yield b"partial"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        store.write_blob(chunks())
    assert not any(store.blobs_dir.iterdir())


def test_blob_writer_takes_pieces_and_commits_under_the_digest(store):
    data = b"piece one, " * 1000 + b"piece two"
    with store.blob_writer(sha256_of(data)) as writer:
        writer.write(data[:5000])
        writer.write(data[5000:])
        assert writer.commit() == (sha256_of(data), len(data))
    assert store.blob_path(sha256_of(data)).read_bytes() == data and not leftovers(store)


def test_aborted_blob_writer_leaves_nothing(store):
    writer = store.blob_writer(sha256_of(b"never finished"))
    writer.write(b"never")
    assert len(leftovers(store)) == 1, "the bytes so far are in a temp file"
    writer.abort()
    writer.abort()  # twice is harmless (a cancelled upload and its cleanup may both call it)
    assert not any(store.blobs_dir.iterdir())


@pytest.mark.parametrize("digest", ["sha256:../../etc/passwd", "sha256:" + "A" * 64, "sha256:abc", "../x"])
def test_blob_paths_refuse_bad_digests(store, digest):
    with pytest.raises(InvalidDigest):
        store.blob_path(digest)
    with pytest.raises(InvalidDigest):
        store.write_blob([b"x"], digest)
    assert not store.root.exists()  # refused before anything was created


def test_import_file_copies_and_hashes(store, tmp_path):
    source = tmp_path / "model.bin"
    source.write_bytes(b"\x00" * 3_000_000)
    digest, size = store.import_file(source)
    assert size == 3_000_000 and store.blob_path(digest).read_bytes() == source.read_bytes()


def test_blobs_are_readable_by_others(store):
    digest, _ = store.write_blob([b"x"])
    assert store.blob_path(digest).stat().st_mode & 0o777 == 0o644


# ---- manifests ------------------------------------------------------------------------------------


def test_manifest_lands_in_ollama_layout(store):
    manifest = install(store, "ns/m:v1", b"gguf")
    path = store.root / "manifests" / "registry.ollama.ai" / "ns" / "m" / "v1"
    assert Manifest.parse(path.read_bytes()) == manifest
    assert store.read_manifest("ns/m:v1") == manifest
    assert not leftovers(store)


def test_manifest_refused_when_a_blob_is_missing(store):
    config = store.write_json_blob({}, media.CONFIG)
    before = snapshot(store.root)
    missing = Layer(media.MODEL, "sha256:" + "c" * 64, 5)
    with pytest.raises(MissingBlob, match="missing blob"):
        store.write_manifest("m", Manifest(config, (missing,)))
    assert snapshot(store.root) == before


def test_resolve_is_case_insensitive(store):
    install(store, "Team/Model:Q4", b"gguf")
    assert store.resolve("team/model:q4") == ModelName.parse("Team/Model:Q4")
    assert store.read_manifest("TEAM/MODEL:Q4").layers[0].digest == sha256_of(b"gguf")


def test_unknown_model_is_a_404_naming_it(store):
    with pytest.raises(ModelNotFound) as err:
        store.resolve("nothing")
    assert str(err.value) == "model 'nothing:latest' not found" and err.value.status == 404


def test_list_reports_name_digest_size_and_time(store):
    manifest = install(store, "m:1", b"x" * 100)
    time.sleep(0.01)
    install(store, "pypi.org/pkg", b"y" * 10)
    entries = store.list_models()
    assert [e.name.display() for e in entries] == ["pypi.org/library/pkg:latest", "m:1"]  # newest first
    first = entries[1]
    path = store.manifest_path(first.name)
    assert first.digest == sha256_of(path.read_bytes())[7:]
    assert first.size == manifest.size == 100 + manifest.config.size
    assert first.modified_at.tzinfo is not None
    assert abs(first.modified_at.astimezone(timezone.utc).timestamp() - path.stat().st_mtime) < 1e-3
    assert first.details["family"] == "llama" and first.details["format"] == "gguf"


def test_list_skips_junk_in_the_manifest_tree(store):
    install(store, "m", b"x")
    junk = store.manifests_dir / "registry.ollama.ai" / "library" / "bad name" / "latest"
    junk.parent.mkdir(parents=True)
    junk.write_text("{}")
    broken = store.manifests_dir / "registry.ollama.ai" / "library" / "broken" / "latest"
    broken.parent.mkdir(parents=True)
    broken.write_text("not json")
    assert [e.name.display() for e in store.list_models()] == ["m:latest"]


def test_copy_shares_blobs_and_digest(store):
    install(store, "m", b"weights")
    store.copy("M", "copy:v2")
    entries = {e.name.display(): e for e in store.list_models()}
    assert entries["copy:v2"].digest == entries["m:latest"].digest
    assert store.runner_key("copy:v2") == store.runner_key("m") == sha256_of(b"weights")
    assert len(list(store.blobs_dir.iterdir())) == 2  # config + weights, not duplicated


def test_copy_of_unknown_model_is_404(store):
    with pytest.raises(ModelNotFound):
        store.copy("nope", "x")


def test_delete_keeps_blobs_another_model_uses(store):
    install(store, "a", b"shared", b"only-a")
    install(store, "b", b"shared")
    removed = store.delete("A")
    assert removed == [sha256_of(b"only-a")]
    assert store.has_blob(sha256_of(b"shared")) and not store.has_blob(sha256_of(b"only-a"))
    assert [e.name.display() for e in store.list_models()] == ["b:latest"]


def test_delete_waits_while_a_model_is_being_assembled(store):
    import threading

    install(store, "a", b"weights")
    with store.assembling():  # as create does while it reuses a's blobs for a new model
        deleting = threading.Thread(target=store.delete, args=("a",))
        deleting.start()
        deleting.join(0.2)
        assert deleting.is_alive(), "the delete must not prune blobs mid-create"
        install(store, "b", b"weights")
    deleting.join(5)
    assert store.has_blob(sha256_of(b"weights")), "b still uses the blob"


def test_delete_last_model_removes_blobs_and_empty_dirs(store):
    install(store, "ns/m:t", b"weights")
    store.delete("ns/m:t")
    assert not any(store.blobs_dir.iterdir())
    assert not any(store.manifests_dir.iterdir())
    with pytest.raises(ModelNotFound):
        store.delete("ns/m:t")


def test_replacing_a_model_removes_layers_nothing_uses(store):
    install(store, "keep", b"common")
    install(store, "m", b"common", b"old-system")
    config = store.read_manifest("m").config
    removed = store.write_manifest("m", Manifest(config, (blob(store, b"common"), blob(store, b"new-system"))))
    assert removed == [sha256_of(b"old-system")]
    assert store.has_blob(sha256_of(b"common")) and store.has_blob(sha256_of(b"new-system"))


def test_same_name_in_other_case_replaces_instead_of_duplicating(store):
    install(store, "Model", b"v1")
    install(store, "model", b"v2")
    assert [e.name.display() for e in store.list_models()] == ["model:latest"]
    assert not store.has_blob(sha256_of(b"v1"))


def test_stale_temp_files_are_cleaned(store):
    store.blobs_dir.mkdir(parents=True)
    stale, fresh = store.blobs_dir / ".tmp-old", store.blobs_dir / ".tmp-new"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (time.time() - 7200,) * 2)
    assert store.remove_stale_temp_files(older_than=3600) == 1
    assert not stale.exists() and fresh.exists()


# ---- a full disk ----------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", [
    pytest.param(lambda store: store.write_blob([b"x" * 100_000]), id="write a blob"),
    pytest.param(lambda store: store.write_blob([b"x"], sha256_of(b"x")), id="write a tiny blob"),
    pytest.param(lambda store: store.copy("m", "m2"), id="copy a model"),
    pytest.param(lambda store: store.write_manifest("m3", store.read_manifest("m")), id="install a manifest"),
])
def test_full_disk_says_no_space_and_leaves_no_temp_file(small_disk, operation):
    store = Store(small_disk / "models")
    install(store, "m", b"gguf")
    before = snapshot(store.root)
    fill(small_disk)
    with pytest.raises(NoSpace) as err:
        operation(store)
    assert err.value.status == 507
    assert str(err.value).startswith("no space left on device while writing ")
    assert str(small_disk) not in str(err.value), "no absolute paths in messages"
    assert not leftovers(store), "the temp file is removed although closing it fails again"
    assert snapshot(store.root) == before


def test_check_space_refuses_what_the_disk_cannot_hold(small_disk):
    store = Store(small_disk / "models")
    store.check_space(1 << 20, "blob x")
    with pytest.raises(NoSpace, match=r"^no space left on device for blob x: needs 5\.2 MB, 4\.\d MB free$"):
        store.check_space(5 << 20, "blob x")
