"""The daemon's app on a test server, over a real store, with fake runners behind the seam by default:
the one builder for route tests (tests/daemon, tests/transfer, tests/registry).

    store = Store(tmp_path / "models")
    add_model(store, "tiny", gguf_path_or_bytes, system="You are tiny.")
    harness = await start_app(store, tmp_path / "s.sock", env={"LLMHOST_NUM_PARALLEL": "2"})
    r = await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "hi"})
    await harness.client.close()

``factory`` (a ``FakeFactory`` unless given) or a whole ``residency`` replace the runners; ``env`` adds
LLMHOST_* settings to the two every test needs (the store and a socket path of its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def add_model(store: Store, name: str, gguf: Path | bytes, **kwargs: Any) -> None:
    """Install ``gguf`` (a file, or its bytes) as ``name`` the way ``llm create`` does: blob, then create.
    ``kwargs`` go to ``create_model`` (system, template, parameters...)."""
    if isinstance(gguf, Path):
        digest, _ = store.import_file(gguf)
        files = {gguf.name: digest}
    else:
        digest, _ = store.write_blob([gguf])
        files = {"model.gguf": digest}
    create_model(store, ModelName.parse(name), files=files, progress=lambda e: None, **kwargs)


def app_state(
    store: Store,
    socket: Path,
    *,
    env: dict[str, str] | None = None,
    factory: Any = None,
    residency: Residency | None = None,
    max_loaded: int = 3,
    max_queue: int = 4,
    memory_budget: int = 8 << 30,
) -> DaemonState:
    """A daemon's state over ``store``; its runners come from ``factory`` (a new ``FakeFactory`` when
    None) through a ``Residency`` of these limits, unless a whole ``residency`` is given."""
    if residency is None:
        residency = Residency(factory if factory is not None else FakeFactory(), max_loaded=max_loaded,
                              max_queue=max_queue, memory_budget=memory_budget, estimate=estimate_for_spec)
    settings = Settings.from_env({"LLMHOST_MODELS": str(store.root), "LLMHOST_SOCKET": str(socket), **(env or {})})
    return DaemonState(settings, store, residency)


@dataclass
class Harness:
    """A started app (``client``) and what tests look into: its store, runner factory and residency."""

    client: TestClient
    store: Store
    factory: Any
    residency: Residency

    def files(self) -> list[str]:
        """Every file in the store (relative paths, sorted)."""
        root = self.store.root
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def serve(state: DaemonState) -> Harness:
    """``state``'s app on a test server on 127.0.0.1; close ``.client`` after."""
    client = TestClient(TestServer(create_app(state), host="127.0.0.1"))
    await client.start_server()
    return Harness(client, state.store, state.residency._factory, state.residency)


async def start_app(store: Store, socket: Path, **kwargs: Any) -> Harness:
    """``serve(app_state(store, socket, **kwargs))``."""
    return await serve(app_state(store, socket, **kwargs))
