"""Shared fixtures: the real test models (from scripts/fetch-test-models)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("LLMHOST_TEST_MODELS", ROOT / ".test-models"))
SMOLLM2 = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = MODELS / "gemma-3-270m-q4_k_m.gguf"


def _model(path: Path) -> Path:
    if not path.exists():
        message = f"{path.name} missing: run scripts/fetch-test-models"
        if os.environ.get("LLMHOST_REQUIRE_TEST_MODELS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return _model(SMOLLM2)


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return _model(GEMMA3)
