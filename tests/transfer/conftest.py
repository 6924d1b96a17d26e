"""Fixtures for transfer tests: a fake registry on 127.0.0.1, a store, small and fast download options."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from llmhost.registry.download import DownloadOptions, Downloads
from llmhost.registry.store import Store
from tests.registry.helpers import write_tiny_gguf
from tests.support.daemon_app import start_app
from tests.transfer.fake_registry import FakeRegistry

FAST = DownloadOptions(min_part_size=64 << 10, stall_timeout=1.0, retries=3, backoff=0.01,
                       progress_interval=0.02, checkpoint_interval=0.05)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a small valid GGUF (~200 KB)."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf").read_bytes()


@pytest.fixture
async def registry():
    server = await FakeRegistry().start()
    yield server
    await server.close()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


@pytest.fixture
def downloads() -> Downloads:
    return Downloads(FAST)


class Events(list):
    """A progress callback that records every event."""

    def __call__(self, event: dict) -> None:
        self.append(event)

    def statuses(self) -> list[str]:
        """Statuses in order, runs of the same status collapsed."""
        out: list[str] = []
        for event in self:
            if not out or out[-1] != event["status"]:
                out.append(event["status"])
        return out


def files_under(root: Path) -> list[str]:
    """Every file below ``root`` (relative paths, sorted): what a failed pull may not leave behind."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
async def daemon(tmp_path: Path):
    """``await daemon(store, serve_registry=False)`` → a started daemon app (fake runners) on 127.0.0.1."""
    clients: list[TestClient] = []

    async def start(store: Store, serve_registry: bool = False) -> TestClient:
        harness = await start_app(store, tmp_path / "s.sock", max_loaded=1, memory_budget=1 << 40,
                                  env={"LLMHOST_SERVE_REGISTRY": "1" if serve_registry else "0"})
        clients.append(harness.client)
        return harness.client

    yield start
    for client in clients:
        await client.close()
