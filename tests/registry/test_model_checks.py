"""Create refuses model files llama.cpp would abort on, and reads GGUFs outside the store lock."""

from __future__ import annotations

import math
import struct
import threading
from pathlib import Path

import gguf
import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from llmhost.errors import InvalidModelFile
from llmhost.registry import create as create_module
from llmhost.registry import record as record_module
from llmhost.registry.create import create_model
from llmhost.registry.gguf_meta import read_gguf_info
from llmhost.registry.store import Store

from .helpers import VOCAB, snapshot, write_tiny_gguf


def patch_value(data: bytes, key: str, fmt: str, value) -> bytes:
    """Overwrite the scalar value of metadata ``key`` (after its 4-byte type)."""
    at = data.index(struct.pack("<Q", len(key)) + key.encode()) + 8 + len(key) + 4
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt):]


def patch_tensor_type(data: bytes, name: str, ggml_type: int) -> bytes:
    """Overwrite the type of a 2-D tensor's info record."""
    at = data.index(struct.pack("<Q", len(name)) + name.encode()) + 8 + len(name) + 4 + 8 * 2
    return data[:at] + struct.pack("<I", ggml_type) + data[at + 4:]


def few_tensors(path: Path, tensors: int) -> bytes:
    """A 2-layer llama file with only the first ``tensors`` of token_embd, output, blk.0.attn_q."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_head_count(4)
    writer.add_token_list(VOCAB)
    for name in ("token_embd.weight", "output.weight", "blk.0.attn_q.weight")[:tensors]:
        writer.add_tensor(name, np.zeros((len(VOCAB), 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


# name → (how to make the file from the tiny model's bytes and a scratch path, what the 400 says)
UNRUNNABLE = {
    "no tensors": (lambda t, p: few_tensors(p, 0), "holds no tensors"),
    "too few tensors": (lambda t, p: few_tensors(p, 2), "2 tensors are too few for llama.block_count = 2"),
    "block_count 0": (lambda t, p: patch_value(t, "llama.block_count", "<I", 0), "llama.block_count is 0"),
    "context length 0": (lambda t, p: patch_value(t, "llama.context_length", "<I", 0), "llama.context_length is 0"),
    "NaN rms epsilon": (lambda t, p: patch_value(t, "llama.attention.layer_norm_rms_epsilon", "<f", math.nan),
                        "llama.attention.layer_norm_rms_epsilon is nan"),
    "infinite rms epsilon": (lambda t, p: patch_value(t, "llama.attention.layer_norm_rms_epsilon", "<f", math.inf),
                             "layer_norm_rms_epsilon is inf"),
    "removed tensor type": (lambda t, p: patch_tensor_type(t, "output.weight", 31), "unknown type 31"),
    "rows not whole blocks": (lambda t, p: patch_tensor_type(t, "output.weight", 12), "not a multiple of the Q4_K"),
}


@pytest.fixture(scope="module")
def tiny_bytes(tmp_path_factory) -> bytes:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf").read_bytes()


@pytest.mark.parametrize("make,problem", UNRUNNABLE.values(), ids=UNRUNNABLE.keys())
def test_create_refuses_what_llama_cpp_would_abort_on(store, tmp_path, tiny_bytes, make, problem):
    digest, _ = store.write_blob([make(tiny_bytes, tmp_path / "scratch.gguf")])
    before = snapshot(store.root)
    with pytest.raises(InvalidModelFile) as err:
        create_model(store, "bad", files={"m.gguf": digest})
    assert err.value.status == 400 and problem in str(err.value)
    assert snapshot(store.root) == before, "nothing written"


def test_a_sound_model_still_creates(store, tiny_bytes):
    digest, _ = store.write_blob([tiny_bytes])
    create_model(store, "good", files={"m.gguf": digest})
    assert store.load("good").info.block_count == 2


# ---- the store lock is free while a GGUF is read -----------------------------------------------------


class SlowRead:
    """read_gguf_info that waits for ``release`` (a file that takes long to parse)."""

    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, path, *args, **kwargs):
        self.started.set()
        assert self.release.wait(10), "never released"
        return read_gguf_info(path, *args, **kwargs)


@pytest.mark.parametrize("source", ["files", "from"])
def test_a_slow_parse_does_not_hold_up_a_copy(store, tiny_bytes, monkeypatch, source):
    digest, _ = store.write_blob([tiny_bytes])
    create_model(store, "base", files={"m.gguf": digest})
    slow = SlowRead()
    monkeypatch.setattr(create_module, "read_gguf_info", slow)
    monkeypatch.setattr(record_module, "read_gguf_info", slow)
    args = {"files": {"m.gguf": digest}} if source == "files" else {"from_": "base"}
    creating = threading.Thread(target=create_model, args=(store, "new"), kwargs=args)
    creating.start()
    try:
        assert slow.started.wait(5)
        copying = threading.Thread(target=store.copy, args=("base", "copy"))
        copying.start()
        copying.join(5)
        assert not copying.is_alive(), "the copy waited for the GGUF parse"
        assert creating.is_alive()
    finally:
        slow.release.set()
        creating.join(10)
    assert {e.name.model for e in store.list_models()} == {"base", "copy", "new"}


# ---- over HTTP -----------------------------------------------------------------------------------


@pytest.fixture
async def client(tmp_path, store):
    from tests.support.daemon_app import start_app

    harness = await start_app(store, tmp_path / "s.sock", max_loaded=1, memory_budget=1 << 40)
    yield harness.client
    await harness.client.close()


async def test_api_create_answers_400_naming_the_problem(client: TestClient, store: Store, tiny_bytes):
    digest, _ = store.write_blob([patch_value(tiny_bytes, "llama.block_count", "<I", 0)])
    r = await client.post("/api/create", json={"model": "bad", "files": {"m.gguf": digest}, "stream": False})
    assert r.status == 400 and "llama.block_count is 0" in (await r.json())["error"]


async def test_api_show_lists_tokens_only_when_verbose(client: TestClient, store: Store, tiny_bytes):
    digest, _ = store.write_blob([tiny_bytes])
    create_model(store, "tiny", files={"m.gguf": digest})
    short = (await (await client.post("/api/show", json={"model": "tiny"})).json())["model_info"]
    verbose = (await (await client.post("/api/show", json={"model": "tiny", "verbose": True})).json())["model_info"]
    assert short["tokenizer.ggml.tokens"] is None
    assert verbose["tokenizer.ggml.tokens"] == VOCAB
    assert verbose["tokenizer.ggml.token_type"] == [1] * len(VOCAB)
