"""A daemon app over a real store holding the tiny model, with fake runners behind the seam.

The tiny model needs no real one (``byte_tokenizer()``): these tests run without the test models.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from llmhost.daemon.state import DaemonState
from llmhost.registry.create import create_model
from llmhost.registry.store import Store
from tests.support.daemon_app import Harness, add_model, app_state, serve
from tests.support.tiny_gguf import byte_tokenizer, write_tiny_llama
from tests.support.tiny_mmproj import write_tiny_mmproj

__all__ = ["Harness", "add_model", "daemon_state", "start_harness"]


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory) -> Path:
    """A tiny llama that loads and runs (byte-level vocabulary, SmolLM2's chat template)."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf", tokenizer=byte_tokenizer())


@pytest.fixture(scope="session")
def template_store(tmp_path_factory, tiny_gguf) -> Path:
    root = tmp_path_factory.mktemp("template") / "models"
    add_model(Store(root), "tiny", tiny_gguf, system="You are tiny.", parameters={"temperature": 0.5})
    return root


def daemon_state(tmp_path: Path, template_store: Path, env: dict | None = None, max_queue: int = 4) -> DaemonState:
    """A daemon's state over a copy of the template store, with a FakeFactory; ``env``: more LLMHOST_* settings."""
    # Hard links: each test gets its own store, and the GGUF metadata cache (keyed by inode) stays warm.
    shutil.copytree(template_store, tmp_path / "models", copy_function=os.link)
    return app_state(Store(tmp_path / "models"), tmp_path / "s.sock", env=env, max_queue=max_queue)


async def start_harness(tmp_path: Path, template_store: Path, env: dict | None = None, max_queue: int = 4) -> Harness:
    """A daemon app on a TCP test server (see ``daemon_state``). Close ``.client`` after."""
    return await serve(daemon_state(tmp_path, template_store, env, max_queue))


@pytest.fixture
async def harness(tmp_path, template_store):
    harness = await start_harness(tmp_path, template_store)
    yield harness
    await harness.client.close()


# ---- the official clients, pointed at the harness and closed after the test ---------------------------


@pytest.fixture
def base_url(harness) -> str:
    return str(harness.client.make_url("")).rstrip("/")


@pytest.fixture
async def openai_client(base_url):
    import openai

    async with openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused") as client:
        yield client


@pytest.fixture
async def anthropic_client(base_url):
    """Without retries, so an error answer is raised at once."""
    import anthropic

    async with anthropic.AsyncAnthropic(base_url=base_url, api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture
async def ollama_client(base_url):
    import ollama

    client = ollama.AsyncClient(host=base_url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def seer(harness, tiny_gguf, tmp_path):
    """``seer``: the tiny model with a projector (vision); ``tiny`` is the same GGUF without one."""
    store = harness.store
    model = store.import_file(tiny_gguf)[0]
    projector = store.import_file(write_tiny_mmproj(tmp_path / "mmproj.gguf"))[0]
    create_model(store, "seer", files={"tiny.gguf": model, "mmproj.gguf": projector})
    return store.load("seer")
