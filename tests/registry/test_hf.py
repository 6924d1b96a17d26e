import asyncio
import logging
import os
from types import SimpleNamespace

import pytest
from huggingface_hub import constants
from huggingface_hub.utils._xet_progress_reporting import XetDownloadProgressReporter

from llmhost.errors import BadRequest, PullError
from llmhost.registry import manifest as media
from llmhost.registry.sources.hf import (
    AccessDenied,
    QuantNotFound,
    RepoNotFound,
    ThreadProgress,
    progress_bridge,
    pull_hf,
    quant_of,
    select_by_quant,
)
from tests.support.processes import free_port

from .fake_hf import split_gguf
from .helpers import CHAT_TEMPLATE, sha256_of, snapshot, write_tiny_gguf


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    """Distinct tiny GGUFs (general.name tells which one was pulled), all with CHAT_TEMPLATE."""
    root = tmp_path_factory.mktemp("hf")
    return {quant: write_tiny_gguf(root / f"{quant}.gguf", name=f"tiny {quant}").read_bytes()
            for quant in ("Q4_K_M", "Q8_0", "F16")}


@pytest.fixture(scope="module")
def split_parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("split")
    tiny = write_tiny_gguf(root / "whole.gguf", name="tiny split")
    return {path.name: path.read_bytes() for path in split_gguf(tiny, root, "Tiny-Q4_K_M", 3)}


@pytest.fixture
def quants(hub, ggufs):
    """org/tiny-GGUF: the usual quant repo, with a README beside the models (text only: a repo with a
    projector, and what a pull takes of it, is tests/registry/test_projector.py's)."""
    hub.add("org/tiny-GGUF", {"README.md": b"# tiny", **{f"Tiny-{q}.gguf": data for q, data in ggufs.items()}})
    return hub


def statuses(events):
    return [e["status"] for e in events]


PULLS = {
    "lower-case quant": ("hf.co/org/tiny-GGUF:q8_0", "tiny Q8_0"),
    "upper-case quant": ("hf.co/org/tiny-GGUF:Q8_0", "tiny Q8_0"),
    "file name as the tag": ("hf.co/org/tiny-GGUF:tiny-f16", "tiny F16"),
    "latest is Q4_K_M": ("hf.co/org/tiny-GGUF", "tiny Q4_K_M"),
    "huggingface.co host": ("huggingface.co/org/tiny-GGUF:F16", "tiny F16"),
}


@pytest.mark.parametrize("name,model", PULLS.values(), ids=PULLS.keys())
async def test_pull_picks_the_gguf_the_tag_names_and_keeps_its_chat_template(store, quants, name, model):
    pulled = await pull_hf(store, name)
    record = store.load(pulled)
    assert record.info.metadata["general.name"] == model
    assert record.chat_template == CHAT_TEMPLATE
    assert quants.file_gets() == [f"/org/tiny-GGUF/resolve/{quants.repos['org/tiny-GGUF'].sha}/Tiny-{model[5:]}.gguf"]


async def test_progress_events_follow_ollamas_order(store, quants, ggufs):
    events = []
    await pull_hf(store, "hf.co/org/tiny-GGUF:Q8_0", events.append)
    digest = sha256_of(ggufs["Q8_0"])
    pulling = [e for e in events[1:] if e["status"] == f"pulling {digest[7:19]}"]
    assert events[0] == {"status": "pulling manifest"}
    assert events[1:1 + len(pulling)] == pulling and len(pulling) >= 2
    assert all(e["digest"] == digest and e["total"] == len(ggufs["Q8_0"]) for e in pulling)
    assert [e["completed"] for e in pulling] == sorted(e["completed"] for e in pulling)
    assert pulling[0]["completed"] == 0 and pulling[-1]["completed"] == len(ggufs["Q8_0"])
    assert statuses(events[1 + len(pulling):]) == ["verifying sha256 digest", "writing manifest", "success"]


async def test_the_store_holds_one_copy_of_the_file(store, quants, ggufs):
    name = await pull_hf(store, "hf.co/org/tiny-GGUF:Q8_0")
    manifest = store.read_manifest(name)
    blob = store.blob_path(sha256_of(ggufs["Q8_0"]))
    expected = {f"blobs/{blob.name}", f"blobs/{store.blob_path(manifest.config.digest).name}",
                "manifests/hf.co/org/tiny-GGUF/Q8_0"}
    assert set(snapshot(store.root)) == expected
    assert sorted(p.name for p in store.blobs_dir.iterdir()) == sorted(e[6:] for e in expected if e[0] == "b")
    assert blob.read_bytes() == ggufs["Q8_0"] and blob.stat().st_nlink == 1
    assert manifest.layers == (media.Layer(media.MODEL, sha256_of(ggufs["Q8_0"]), len(ggufs["Q8_0"])),)


async def test_a_repo_with_one_gguf_pulls_it_for_latest(store, hub, ggufs):
    hub.add("org/solo", {"solo.Q8_0.gguf": ggufs["Q8_0"], "config.json": b"{}"})
    await pull_hf(store, "hf.co/org/solo")
    assert store.load("hf.co/org/solo").info.metadata["general.name"] == "tiny Q8_0"


async def test_an_unknown_quant_lists_the_available_ones_and_stores_nothing(store, quants):
    events = []
    with pytest.raises(QuantNotFound) as err:
        await pull_hf(store, "hf.co/org/tiny-GGUF:q5_k_s", events.append)
    assert err.value.status == 404
    assert str(err.value) == 'no GGUF file for "q5_k_s" in hf.co/org/tiny-GGUF (available: F16, Q4_K_M, Q8_0)'
    assert snapshot(store.root) == {} and quants.file_gets() == []
    assert statuses(events) == ["pulling manifest"]


async def test_latest_without_q4_k_m_asks_for_a_tag(store, hub, ggufs):
    hub.add("org/two", {"two-Q8_0.gguf": ggufs["Q8_0"], "two-F16.gguf": ggufs["F16"]})
    with pytest.raises(QuantNotFound, match=r"several GGUF files and none is Q4_K_M; pick one with a tag "
                                            r"\(available: F16, Q8_0\), e.g. hf.co/org/two:F16"):
        await pull_hf(store, "hf.co/org/two")
    assert snapshot(store.root) == {}


async def test_a_repo_without_gguf_files_is_a_clear_404(store, hub):
    hub.add("org/safetensors", {"model.safetensors": b"x", "config.json": b"{}"})
    with pytest.raises(QuantNotFound, match="hf.co/org/safetensors has no GGUF files to pull"):
        await pull_hf(store, "hf.co/org/safetensors")


async def test_an_unknown_repo_is_a_clear_404(store, hub):
    with pytest.raises(RepoNotFound) as err:
        await pull_hf(store, "hf.co/org/nothing:Q4_K_M")
    assert err.value.status == 404
    assert 'Hugging Face repository "org/nothing" not found' in str(err.value) and "HF_TOKEN" in str(err.value)
    assert snapshot(store.root) == {}


async def test_a_gated_repo_needs_hf_token(store, hub, ggufs, monkeypatch):
    hub.add("org/gated", {"gated-Q4_K_M.gguf": ggufs["Q4_K_M"]}, gated=True)
    with pytest.raises(AccessDenied) as err:
        await pull_hf(store, "hf.co/org/gated")
    assert err.value.status == 403 and "gated" in str(err.value) and "HF_TOKEN" in str(err.value)
    assert snapshot(store.root) == {}

    monkeypatch.setenv("HF_TOKEN", hub.token)
    await pull_hf(store, "hf.co/org/gated")
    assert store.load("hf.co/org/gated").info.metadata["general.name"] == "tiny Q4_K_M"


async def test_a_file_that_does_not_match_its_sha256_is_refused(store, hub, ggufs):
    hub.add("org/bad", {"bad-Q4_K_M.gguf": ggufs["Q4_K_M"]}, bad_sha256={"bad-Q4_K_M.gguf"})
    with pytest.raises(PullError, match='digest mismatch for bad-Q4_K_M.gguf, expected "sha256:0000'):
        await pull_hf(store, "hf.co/org/bad")
    assert snapshot(store.root) == {}


async def test_pulling_again_downloads_nothing(store, quants, ggufs):
    await pull_hf(store, "hf.co/org/tiny-GGUF:Q8_0")
    events = []
    await pull_hf(store, "hf.co/org/tiny-GGUF:Q8_0", events.append)
    size = len(ggufs["Q8_0"])
    assert len(quants.file_gets()) == 1
    assert events[1] == {"status": f"pulling {sha256_of(ggufs['Q8_0'])[7:19]}", "digest": sha256_of(ggufs["Q8_0"]),
                         "total": size, "completed": size}
    assert statuses(events)[-3:] == ["verifying sha256 digest", "writing manifest", "success"]


async def test_a_file_kept_in_git_is_hashed_as_it_arrives(store, hub, ggufs):
    hub.add("org/plain", {"plain-Q4_K_M.gguf": ggufs["Q4_K_M"]}, lfs=False)
    events = []
    await pull_hf(store, "hf.co/org/plain", events.append)
    assert store.runner_key("hf.co/org/plain") == sha256_of(ggufs["Q4_K_M"])
    assert {e["status"] for e in events if "total" in e} == {"pulling plain-Q4_K_M"}


async def test_a_split_gguf_becomes_one_layer_per_part(store, hub, split_parts):
    hub.add("org/split", {f"Q4_K_M/{name}": data for name, data in split_parts.items()})
    events = []
    name = await pull_hf(store, "hf.co/org/split:q4_k_m", events.append)
    manifest = store.read_manifest(name)
    parts = list(split_parts.values())
    assert [(layer.media_type, layer.digest) for layer in manifest.layers] == [
        (media.MODEL, sha256_of(data)) for data in parts]
    assert statuses(events)[1:4] == [f"pulling {sha256_of(data)[7:19]}" for data in parts]
    assert store.load(name).chat_template == CHAT_TEMPLATE  # the first part holds the metadata

    first = store.model_path(manifest)
    assert first.name == "model-00001-of-00003.gguf"
    for i, data in enumerate(parts, 1):
        linked = first.parent / f"model-{i:05d}-of-00003.gguf"
        assert os.path.samefile(linked, store.blob_path(sha256_of(data)))  # links, not copies
    assert store.model_path(manifest) == first  # idempotent
    assert store.load(name).model_path == first, "runners load the split model through the links"

    store.delete(name)  # the links would keep the parts' disk space
    assert not first.parent.exists() and not list(store.blobs_dir.iterdir())


async def test_work_directories_of_dead_pulls_are_removed(store, quants):
    dead, live = store.blobs_dir / ".tmp-hf-dead", store.blobs_dir / ".tmp-hf-live"
    for directory in (dead, live):
        (directory / "files").mkdir(parents=True)
        (directory / "files" / "part.incomplete").write_bytes(b"x")
    for path in (dead, dead / "files", dead / "files" / "part.incomplete"):
        os.utime(path, (0, 0))
    await pull_hf(store, "hf.co/org/tiny-GGUF")
    assert not dead.exists() and live.exists()


async def test_an_incomplete_split_gguf_is_refused(store, hub, split_parts):
    hub.add("org/partial", dict(list(split_parts.items())[:2]))
    with pytest.raises(PullError, match="split model Tiny-Q4_K_M is incomplete: the repository holds parts 1, 2 of 3"):
        await pull_hf(store, "hf.co/org/partial")
    assert snapshot(store.root) == {}


async def test_a_cancelled_pull_stops_the_transfer_and_leaves_nothing(store, quants, ggufs, monkeypatch):
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 << 10)  # the download loop checks per chunk
    quants.throttle = 0.01
    started = asyncio.Event()

    def progress(event):
        if event.get("completed"):
            started.set()

    task = asyncio.ensure_future(pull_hf(store, "hf.co/org/tiny-GGUF:Q8_0", progress))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sent = quants.bytes_sent
    await asyncio.sleep(0.2)
    assert quants.bytes_sent < len(ggufs["Q8_0"]) and quants.bytes_sent - sent <= 64 << 10
    assert snapshot(store.root) == {}


async def test_an_unreachable_hub_is_a_pull_error(store, hub, monkeypatch):
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    with pytest.raises(PullError, match=f"cannot reach Hugging Face at {closed} for org/tiny-GGUF"):
        await pull_hf(store, "hf.co/org/tiny-GGUF")
    assert snapshot(store.root) == {}


def test_xet_downloads_report_bytes_written_once():
    """Xet's reporter drives two counters (network, disk); the bridge takes one bar and counts the disk's."""
    transfer = ThreadProgress()
    report = XetDownloadProgressReporter(reconstruction_desc="x", total=100, log_level=logging.INFO,
                                         tqdm_class=progress_bridge(transfer))
    with report:
        for written, received in ((40, 60), (100, 90)):
            report.update_progress(SimpleNamespace(
                total_bytes_completed=written, total_transfer_bytes_completed=received, total_bytes=100,
                total_bytes_completion_rate=1.0, total_transfer_bytes_completion_rate=1.0))
    assert transfer.completed == 100


async def test_only_hugging_face_names_are_accepted(store):
    with pytest.raises(BadRequest, match="not a Hugging Face model name"):
        await pull_hf(store, "registry.ollama.ai/library/tiny")


QUANTS = {
    "dash": ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
    "dot": ("llama-3.2-1b-instruct.q8_0.gguf", "Q8_0"),
    "i-quant": ("Model-IQ2_XXS.gguf", "IQ2_XXS"),
    "float": ("model-bf16.gguf", "BF16"),
    "split": ("Q4_K_M/Big-Q4_K_M-00002-of-00004.gguf", "Q4_K_M"),
    "unsloth dynamic": ("Model-UD-Q4_K_XL.gguf", "Q4_K_XL"),
    "no quant": ("weights.gguf", "WEIGHTS"),
}


@pytest.mark.parametrize("filename,quant", QUANTS.values(), ids=QUANTS.keys())
def test_quant_of_reads_the_file_name(filename, quant):
    assert quant_of(filename) == quant


SELECTIONS = {
    "quant, any case": (["a-Q4_K_M.gguf", "a-Q8_0.gguf"], "q8_0", None, ["a-Q8_0.gguf"]),
    "whole stem": (["a-Q4_K_M.gguf", "b-Q4_K_M.gguf"], "B-q4_k_m", None, ["b-Q4_K_M.gguf"]),
    "no tag: the default": (["a-Q4_K_M.gguf", "a-Q8_0.gguf"], None, "Q4_K_M", ["a-Q4_K_M.gguf"]),
    "no tag: the only one": (["a-Q8_0.gguf"], None, "Q4_K_M", ["a-Q8_0.gguf"]),
    "no tag, several": (["a-Q8_0.gguf", "a-F16.gguf"], None, "Q4_K_M", []),
    "a prefix is not a match": (["a-Q4_K_M.gguf"], "q4_k", None, []),
}


@pytest.mark.parametrize("names,wanted,default,expected", SELECTIONS.values(), ids=SELECTIONS.keys())
def test_select_by_quant(names, wanted, default, expected):
    assert select_by_quant(names, str, wanted, default) == expected
