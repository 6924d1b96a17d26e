"""Pulling a single GGUF file by URL."""

from __future__ import annotations

import asyncio

import pytest

from llmhost.errors import BadRequest, PullError
from llmhost.registry.download import Downloads
from llmhost.registry.sources.url import is_model_url, name_for_url, pull_url
from llmhost.registry.store import Store
from tests.transfer.conftest import FAST, Events, files_under


@pytest.mark.parametrize("text, expected", [
    ("https://example.com/models/tiny.gguf", True),
    ("HTTP://example.com/tiny.GGUF", True),
    ("https://example.com/tiny.gguf?download=1", True),
    ("https://example.com/library/tiny:latest", False),
    ("http://127.0.0.1:5000/library/tiny", False),
    ("example.com/tiny.gguf", False),
    ("ftp://example.com/tiny.gguf", False),
], ids=["https", "case", "query", "registry-name", "http-registry", "no-scheme", "ftp"])
def test_what_counts_as_a_model_url(text, expected):
    assert is_model_url(text) is expected


@pytest.mark.parametrize("url, name", [
    ("https://example.com/m/Tiny-Q4_K_M.gguf", "example.com/library/Tiny-Q4_K_M:latest"),
    ("http://127.0.0.1:8080/files/tiny.gguf", "127.0.0.1:8080/library/tiny:latest"),
    ("https://Example.COM/a%20model%2B1.gguf", "example.com/library/a-model-1:latest"),
    ("https://example.com/..gguf", "example.com/library/model:latest"),
    ("https://example.com/.hidden.gguf", "example.com/library/hidden:latest"),
], ids=["plain", "port", "escapes", "empty-stem", "dot-first"])
def test_model_names_come_from_the_file_name(url, name):
    assert name_for_url(url).display() == name


async def test_pull_by_url_installs_a_loadable_model(store, registry, downloads, tiny_gguf):
    registry.files["Tiny-Chat.gguf"] = tiny_gguf
    events = Events()

    name = await pull_url(store, f"{registry.url}/files/Tiny-Chat.gguf", events, insecure=True, downloads=downloads)

    assert name.display() == f"{registry.host}/library/Tiny-Chat:latest"
    assert store.load(name).model_path.read_bytes() == tiny_gguf
    assert events.statuses()[0] == "pulling Tiny-Chat"
    assert events.statuses()[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert [e["completed"] for e in events if "completed" in e][-1] == len(tiny_gguf)


async def test_a_file_that_is_not_gguf_leaves_nothing(store, registry, downloads):
    registry.files["fake.gguf"] = b"<html>not a model</html>"

    with pytest.raises(PullError, match="is not a usable GGUF model: not a GGUF file"):
        await pull_url(store, f"{registry.url}/files/fake.gguf", insecure=True, downloads=downloads)

    assert store.list_models() == [] and files_under(store.root) == []


async def test_plain_http_needs_insecure(store, registry):
    with pytest.raises(BadRequest, match="insecure protocol http"):
        await pull_url(store, f"{registry.url}/files/x.gguf")


async def test_a_cancelled_url_pull_resumes(tmp_path, registry, tiny_gguf):
    blob = tiny_gguf + bytes(1 << 20)  # a GGUF with trailing padding still parses
    registry.files["tiny.gguf"] = blob
    registry.rate, registry.chunk = 512 << 10, 16 << 10
    store, url = Store(tmp_path / "models"), f"{registry.url}/files/tiny.gguf"
    halfway = asyncio.Event()

    def watch(event: dict) -> None:
        if event.get("completed", 0) >= len(blob) // 2:
            halfway.set()

    task = asyncio.ensure_future(pull_url(store, url, watch, insecure=True, downloads=Downloads(FAST)))
    await asyncio.wait_for(halfway.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    registry.rate = None
    before = registry.served["tiny.gguf"]

    await pull_url(Store(tmp_path / "models"), url, insecure=True, downloads=Downloads(FAST))

    assert registry.served["tiny.gguf"] - before <= len(blob) // 2 * 1.05
    assert [p for p in files_under(store.root) if "partial" in p] == []
