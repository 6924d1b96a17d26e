"""A daemon app over a real store holding the tiny model, with fake runners behind the seam."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from llmhost.config import Settings
from llmhost.daemon.app import create_app
from llmhost.daemon.memory import estimate_for_spec
from llmhost.daemon.residency import Residency
from llmhost.daemon.state import DaemonState
from llmhost.registry.create import create_model
from llmhost.registry.names import ModelName
from llmhost.registry.store import Store
from tests.daemon.fakes import FakeFactory
from tests.support.tiny_gguf import write_tiny_llama


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, smollm2_path) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf", source=smollm2_path)


def add_model(store: Store, name: str, gguf: Path, **kwargs) -> None:
    digest, _ = store.import_file(gguf)
    create_model(store, ModelName.parse(name), files={gguf.name: digest}, progress=lambda e: None, **kwargs)


class Harness:
    def __init__(self, client: TestClient, store: Store, factory: FakeFactory, residency: Residency):
        self.client = client
        self.store = store
        self.factory = factory
        self.residency = residency

    def files(self) -> list[str]:
        root = self.store.root
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def template_store(tmp_path_factory, tiny_gguf) -> Path:
    root = tmp_path_factory.mktemp("template") / "models"
    add_model(Store(root), "tiny", tiny_gguf, system="You are tiny.", parameters={"temperature": 0.5})
    return root


def daemon_state(tmp_path: Path, template_store: Path, env: dict | None = None, max_queue: int = 4) -> DaemonState:
    """A daemon's state over a copy of the template store, with a FakeFactory; ``env``: more LLMHOST_* settings."""
    # Hard links: each test gets its own store, and the GGUF metadata cache (keyed by inode) stays warm.
    shutil.copytree(template_store, tmp_path / "models", copy_function=os.link)
    residency = Residency(FakeFactory(), max_loaded=3, max_queue=max_queue, memory_budget=8 << 30,
                          estimate=estimate_for_spec)
    settings = Settings.from_env({"LLMHOST_MODELS": str(tmp_path / "models"),
                                  "LLMHOST_SOCKET": str(tmp_path / "s.sock"), **(env or {})})
    return DaemonState(settings, Store(tmp_path / "models"), residency)


async def start_harness(tmp_path: Path, template_store: Path, env: dict | None = None, max_queue: int = 4) -> Harness:
    """A daemon app on a TCP test server (see ``daemon_state``). Close ``.client`` after."""
    state = daemon_state(tmp_path, template_store, env, max_queue)
    client = TestClient(TestServer(create_app(state)))
    await client.start_server()
    return Harness(client, state.store, state.residency._factory, state.residency)


@pytest.fixture
async def harness(tmp_path, template_store):
    harness = await start_harness(tmp_path, template_store)
    yield harness
    await harness.client.close()
