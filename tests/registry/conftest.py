from __future__ import annotations

from pathlib import Path

import pytest

from llmhost.registry.store import Store

from .helpers import write_tiny_gguf

SMOLLM = Path(__file__).resolve().parents[2] / ".test-models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid GGUF shared by the session (read-only)."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "models")


@pytest.fixture(scope="session")
def smollm() -> Path:
    if not SMOLLM.is_file():
        pytest.skip(f"real test model missing: run scripts/fetch-test-models to get {SMOLLM.name}")
    return SMOLLM
