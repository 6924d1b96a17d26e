"""Pulling from an Ollama-compatible registry: events, resume, verification, auth, disk, de-duplication."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from llmhost.errors import BadRequest, InvalidManifest, NotFound, PullError
from llmhost.registry.download import Downloads
from llmhost.registry.sources.ollama import parse_challenge, pull_ollama
from llmhost.registry.store import Store
from tests.transfer.conftest import FAST, Events, files_under, random_bytes
from tests.transfer.fake_registry import MODEL, PARAMS, FakeRegistry, manifest_bytes, sha


async def pull(store: Store, registry: FakeRegistry, downloads: Downloads, events=None, model: str = "library/tiny",
               **kw):
    return await pull_ollama(store, f"{registry.url}/{model}", events, scheme="http", insecure=True,
                             downloads=downloads, **kw)


def layer_events(events: Events, digest: str) -> list[dict]:
    return [e for e in events if e.get("digest") == digest]


async def test_full_pull_lists_and_loads_the_model(store, registry, downloads, tiny_gguf):
    params = json.dumps({"temperature": 0.3}).encode()
    manifest = registry.add_model("library", "tiny", "latest", [(MODEL, tiny_gguf), (PARAMS, params)])
    events = Events()

    name = await pull(store, registry, downloads, events)

    [entry] = store.list_models()
    assert entry.name == name and entry.digest == hashlib.sha256(manifest).hexdigest()
    record = store.load(name)
    assert record.parameters == {"temperature": 0.3}
    assert record.model_path.read_bytes() == tiny_gguf
    assert files_under(store.blobs_dir) == sorted(f"sha256-{d[7:]}" for d in registry.blobs)


async def test_events_follow_ollamas_order(store, registry, downloads, tiny_gguf):
    registry.add_model("library", "tiny", "latest", [(MODEL, tiny_gguf)])
    events = Events()

    await pull(store, registry, downloads, events)

    statuses = events.statuses()
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert set(statuses[1:-3]) == {f"pulling {d[7:19]}" for d in registry.blobs}
    for digest, data in registry.blobs.items():
        layer = layer_events(events, digest)
        completed = [e["completed"] for e in layer]
        assert completed == sorted(completed), "progress went backwards"
        assert completed[-1] == len(data) and all(e["total"] == len(data) for e in layer)


async def test_cached_blobs_report_complete_and_are_not_fetched(store, registry, downloads, tiny_gguf):
    registry.add_model("library", "tiny", "latest", [(MODEL, tiny_gguf)])
    await pull(store, registry, downloads)
    registry.reset_counts()
    events = Events()

    await pull(store, registry, downloads, events)

    assert sum(registry.served.values()) == 0
    for digest, data in registry.blobs.items():
        assert [(e["completed"], e["total"]) for e in layer_events(events, digest)] == [(len(data), len(data))]
    assert "removing unused layers" not in events.statuses()


async def test_bytes_received_are_counted_once_for_the_pull_metric(store, registry, downloads, tiny_gguf):
    registry.add_model("library", "tiny", "latest", [(MODEL, tiny_gguf)])
    await pull(store, registry, downloads)
    await pull(store, registry, downloads)  # everything is local now: nothing more is received
    assert downloads.received == sum(len(data) for data in registry.blobs.values())


async def test_a_new_version_removes_layers_nothing_uses(store, registry, downloads, tiny_gguf):
    old = random_bytes(1000, seed=1)
    registry.add_model("library", "tiny", "latest", [(MODEL, tiny_gguf), (PARAMS, old)])
    await pull(store, registry, downloads)
    registry.add_model("library", "tiny", "latest", [(MODEL, tiny_gguf), (PARAMS, b'{"top_k":1}')])
    events = Events()

    await pull(store, registry, downloads, events)

    assert events.statuses()[-2:] == ["removing unused layers", "success"]
    assert not store.has_blob(sha(old)) and store.has_blob(sha(tiny_gguf))


async def test_parts_are_fetched_in_parallel_ranges(store, registry, downloads):
    blob = random_bytes(1 << 20)
    registry.add_model("library", "big", "latest", [(MODEL, blob)])

    await pull(store, registry, downloads, model="library/big")

    assert registry.blob_gets[sha(blob)] == 16  # 1 MiB in parts of max(size/32, 64 KiB)
    assert registry.served[sha(blob)] == len(blob)
    assert store.blob_path(sha(blob)).read_bytes() == blob


# ---- resume ------------------------------------------------------------------------------------


async def cancel_halfway(store: Store, registry: FakeRegistry, downloads: Downloads, digest: str, size: int) -> None:
    """Start a throttled pull, cancel it once half the blob is written."""
    halfway = asyncio.Event()

    def watch(event: dict) -> None:
        if event.get("digest") == digest and event["completed"] >= size // 2:
            halfway.set()

    task = asyncio.ensure_future(pull(store, registry, downloads, watch, model="library/big"))
    await asyncio.wait_for(halfway.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def saved_progress(store: Store, digest: str) -> int:
    state = json.loads((store.blobs_dir / f"sha256-{digest[7:]}-partial.json").read_text())
    return sum(part["completed"] for part in state["parts"])


@pytest.mark.parametrize("restart", [False, True], ids=["same-daemon", "after-restart"])
async def test_cancelled_pull_resumes_with_only_the_missing_bytes(tmp_path, registry, restart):
    blob = random_bytes(2 << 20)
    digest = sha(blob)
    registry.add_model("library", "big", "latest", [(MODEL, blob)])
    registry.rate, registry.chunk = 512 << 10, 16 << 10  # 8 parts × 512 KiB/s: ~0.5 s for the whole blob
    store = Store(tmp_path / "models")
    await cancel_halfway(store, registry, Downloads(FAST), digest, len(blob))
    done = saved_progress(store, digest)
    assert len(blob) // 2 <= done < len(blob)
    assert store.list_models() == []
    registry.reset_counts()
    registry.rate = None

    if restart:  # a new daemon: fresh store object and no in-process download registry
        store = Store(tmp_path / "models")
    await pull(store, registry, Downloads(FAST), model="library/big")

    missing = len(blob) - done
    assert registry.served[digest] <= missing * 1.05
    assert store.blob_path(digest).read_bytes() == blob
    assert [e.name.model for e in store.list_models()] == ["big"]
    assert files_under(store.blobs_dir) == sorted(f"sha256-{d[7:]}" for d in registry.blobs)


async def test_damaged_state_starts_over(store, registry, downloads):
    blob = random_bytes(300 << 10)
    registry.add_model("library", "big", "latest", [(MODEL, blob)])
    store.blobs_dir.mkdir(parents=True)
    (store.blobs_dir / f"sha256-{sha(blob)[7:]}-partial").write_bytes(b"garbage")
    (store.blobs_dir / f"sha256-{sha(blob)[7:]}-partial.json").write_text('{"parts": "nonsense"}')

    await pull(store, registry, downloads, model="library/big")

    assert store.blob_path(sha(blob)).read_bytes() == blob
    assert registry.served[sha(blob)] == len(blob)


async def test_a_stalled_part_is_retried(store, registry, tiny_gguf):
    registry.add_model("library", "tiny", "latest", [(MODEL, tiny_gguf)])
    registry.stall_once[sha(tiny_gguf)] = 1.0
    downloads = Downloads(dataclasses.replace(FAST, stall_timeout=0.3))

    await pull(store, registry, downloads)

    assert registry.blob_gets[sha(tiny_gguf)] >= 2
    assert store.blob_path(sha(tiny_gguf)).read_bytes() == tiny_gguf


async def test_a_server_ignoring_range_is_read_once_in_one_part(store, registry, downloads):
    blob = random_bytes(2 << 20)
    registry.add_model("library", "big", "latest", [(MODEL, blob)])
    registry.ignore_range = True

    await pull(store, registry, downloads, model="library/big")

    assert store.blob_path(sha(blob)).read_bytes() == blob
    assert registry.blob_gets[sha(blob)] == 2  # the one-byte probe, then the blob
    # The probe's answer may fill loopback buffers before the client hangs up; 32 parts each read
    # from byte 0 would send ~16 times the blob.
    assert registry.served[sha(blob)] <= len(blob) * 2


async def test_ranges_are_probed_when_not_advertised(store, registry, downloads, monkeypatch):
    blob = random_bytes(1 << 20)
    registry.add_model("library", "big", "latest", [(MODEL, blob)])
    original = registry._send

    async def without_accept_ranges(request, data, key):
        response = await original(request, data, key)
        response.headers.pop("Accept-Ranges", None) if request.method == "HEAD" else None
        return response

    monkeypatch.setattr(registry, "_send", without_accept_ranges)

    await pull(store, registry, downloads, model="library/big")

    assert registry.blob_gets[sha(blob)] == 1 + 16  # the probe, then the parts
    assert store.blob_path(sha(blob)).read_bytes() == blob


# ---- refusals ----------------------------------------------------------------------------------


async def test_bytes_not_matching_the_digest_leave_nothing(store, registry, downloads, tiny_gguf):
    registry.add_model("library", "tiny", "latest", [(MODEL, tiny_gguf)])
    registry.corrupt[sha(tiny_gguf)] = bytes(len(tiny_gguf))  # same size, wrong bytes
    events = Events()

    with pytest.raises(PullError, match="digest mismatch"):
        await pull(store, registry, downloads, events)

    assert store.list_models() == []
    assert files_under(store.root) == []
    assert "writing manifest" not in events.statuses()


async def test_a_blob_larger_than_the_manifest_says_is_refused(store, registry, downloads):
    blob = random_bytes(100 << 10)
    registry.add_model("library", "tiny", "latest", [(MODEL, blob)])
    registry.corrupt[sha(blob)] = blob + b"x" * 4096

    with pytest.raises(PullError, match="the server has 106496 bytes, the manifest says 102400"):
        await pull(store, registry, downloads)

    assert files_under(store.root) == []


@pytest.mark.parametrize("digest", [
    "sha256:../../../../etc/passwd",
    "sha256:" + "a" * 63,
    "sha256:" + "A" * 64,
    "sha512:" + "a" * 64,
    "sha256:" + "a" * 64 + "/../../x",
], ids=["traversal", "short", "uppercase", "algorithm", "suffix"])
async def test_bad_digests_in_a_manifest_are_refused_before_any_write(store, registry, downloads, digest):
    doc = json.loads(manifest_bytes(b"{}", [(MODEL, b"x")]))
    doc["layers"][0]["digest"] = digest
    registry.manifests[("library", "evil", "latest")] = json.dumps(doc).encode()

    with pytest.raises(InvalidManifest, match="invalid digest"):
        await pull(store, registry, downloads, model="library/evil")

    assert files_under(store.root.parent) == []
    assert not any(path.startswith("/v2/library/evil/blobs") for _, path in registry.requests)


async def test_unknown_model_says_file_does_not_exist(store, registry, downloads):
    with pytest.raises(NotFound, match="^pull model manifest: file does not exist$"):
        await pull(store, registry, downloads, model="library/nothing")


async def test_plain_http_needs_insecure(store, registry):
    with pytest.raises(BadRequest, match="insecure protocol http"):
        await pull_ollama(store, f"{registry.url}/library/tiny", scheme="http", insecure=False)


# ---- auth --------------------------------------------------------------------------------------


async def test_bearer_token_from_a_realm_on_the_same_host(store, registry, downloads, tiny_gguf):
    registry.add_model("library", "tiny", "latest", [(MODEL, tiny_gguf)])
    registry.token = "s3cret-token"

    await pull(store, registry, downloads)

    assert registry.tokens_issued == 1
    assert store.blob_path(sha(tiny_gguf)).read_bytes() == tiny_gguf


async def test_blobs_redirected_to_a_cdn_never_get_the_token(store, registry, downloads):
    cdn = await FakeRegistry().start()
    try:
        blob = random_bytes(1 << 20)
        registry.add_model("library", "big", "latest", [(MODEL, blob)])
        registry.token, registry.redirect_blobs = "s3cret-token", cdn.url
        cdn.files = dict(registry.blobs)

        await pull(store, registry, downloads, model="library/big")

        assert store.blob_path(sha(blob)).read_bytes() == blob
        assert cdn.served[sha(blob)] == len(blob) and cdn.authorization_seen == []
        assert "Bearer s3cret-token" in registry.authorization_seen
    finally:
        await cdn.close()


@pytest.mark.parametrize("realm_host", ["evil", "localhost"], ids=["other-port", "other-name"])
async def test_a_realm_on_another_host_gets_nothing(store, registry, downloads, tiny_gguf, realm_host):
    evil = await FakeRegistry().start()
    try:
        registry.add_model("library", "tiny", "latest", [(MODEL, tiny_gguf)])
        registry.token = "s3cret-token"
        realm_base = evil.url if realm_host == "evil" else registry.url.replace("127.0.0.1", "localhost")
        registry.realm = f"{realm_base}/token"

        with pytest.raises(PullError, match="refusing to send credentials .* must be on the registry's own host"):
            await pull(store, registry, downloads)

        assert evil.requests == [] and evil.tokens_issued == 0 and registry.tokens_issued == 0
        assert files_under(store.root) == []
    finally:
        await evil.close()


@pytest.mark.parametrize("header, params", [
    ('Bearer realm="https://r.example/token",service="registry.example",scope="repository:a/b:pull"',
     {"realm": "https://r.example/token", "service": "registry.example", "scope": "repository:a/b:pull"}),
    ('bearer realm="https://r.example/t?a=1,b=2", scope=repository:a/b:pull',
     {"realm": "https://r.example/t?a=1,b=2", "scope": "repository:a/b:pull"}),
    ('Bearer realm="say \\"hi\\""', {"realm": 'say "hi"'}),
    ('Basic realm="registry"', {}),
    ("", {}),
], ids=["docker", "commas-in-quotes", "escaped-quote", "basic", "empty"])
def test_challenge_parsing(header, params):
    assert parse_challenge(header) == params


@pytest.mark.parametrize("challenge", ["", 'Basic realm="registry"'], ids=["none", "basic"])
async def test_401_without_a_bearer_challenge_is_unauthorized(store, registry, downloads, challenge):
    registry.token, registry.challenge = "s3cret-token", challenge

    with pytest.raises(PullError, match="unauthorized: .* requires authentication and sent no usable Bearer challenge"):
        await pull(store, registry, downloads)


# ---- sharing and the disk ----------------------------------------------------------------------


async def test_two_pulls_of_one_model_download_once(tmp_path, registry, downloads):
    blob = random_bytes(1 << 20)
    registry.add_model("library", "big", "latest", [(MODEL, blob)])
    registry.rate = 2 << 20
    first, second = Events(), Events()

    await asyncio.gather(
        pull(Store(tmp_path / "models"), registry, downloads, first, model="library/big"),
        pull(Store(tmp_path / "models"), registry, downloads, second, model="library/big"),
    )

    assert registry.served[sha(blob)] == len(blob)
    for events in (first, second):
        assert layer_events(events, sha(blob))[-1]["completed"] == len(blob)
        assert events.statuses()[-1] == "success"


@pytest.fixture
def small_disk(tmp_path: Path):
    mount = tmp_path / "disk"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)]
    done = subprocess.run(command, capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill the disk (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


async def test_a_blob_larger_than_the_free_space_is_refused_up_front(small_disk, registry, downloads):
    store = Store(small_disk / "models")
    registry.add_model("library", "big", "latest", [(MODEL, random_bytes(6 << 20))])

    with pytest.raises(PullError, match="no space left on device for .*needs 6.3 MB"):
        await pull(store, registry, downloads, model="library/big")

    assert files_under(store.root) == [] and registry.served == {}


async def test_a_disk_filling_up_mid_pull_is_a_clear_error(small_disk, registry, downloads):
    store = Store(small_disk / "models")
    blob = random_bytes(3 << 20)
    registry.add_model("library", "big", "latest", [(MODEL, blob)])
    registry.rate, registry.chunk = 1 << 20, 16 << 10
    started = asyncio.Event()

    def fill_disk_once_started(event: dict) -> None:
        if event.get("completed"):
            started.set()

    task = asyncio.ensure_future(pull(store, registry, downloads, fill_disk_once_started, model="library/big"))
    await asyncio.wait_for(started.wait(), 30)
    (small_disk / "filler").write_bytes(bytes(3 << 20))  # now the rest of the blob cannot fit

    with pytest.raises(PullError, match="no space left on device while writing .*sha256-.*-partial"):
        await task

    assert store.list_models() == []
    assert files_under(store.root) == []
