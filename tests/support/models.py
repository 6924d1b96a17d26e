"""Where the real test models are: the one locator for tests (benchmarks import its paths too).

``scripts/fetch-test-models`` puts them in ``$LLMHOST_TEST_MODELS`` (default ``.test-models/`` at the
repository root). Both variables are read once, at import, so the test session's environment can be
cleared for every test (tests/conftest.py) without losing them.

    SMOLLM2, GEMMA3          the files' paths, whether or not they are there (for benchmarks)
    smollm2_path()           the path, or skip the test (fail with LLMHOST_REQUIRE_TEST_MODELS=1)
    gemma3_path()            the same for Gemma 3
    skip_unless_required(m)  skip with message ``m``, or fail it where the models are required
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS_VARIABLE = "LLMHOST_TEST_MODELS"
REQUIRE_VARIABLE = "LLMHOST_REQUIRE_TEST_MODELS"
MODELS = Path(os.environ.get(MODELS_VARIABLE) or ROOT / ".test-models")
REQUIRED = os.environ.get(REQUIRE_VARIABLE) == "1"

SMOLLM2 = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"  # 98 MB, a chat model with its Jinja template
GEMMA3 = MODELS / "gemma-3-270m-q4_k_m.gguf"  # 253 MB, a base model


def skip_unless_required(message: str) -> None:
    """Skip the calling test, or fail it when LLMHOST_REQUIRE_TEST_MODELS=1 (CI with the models)."""
    import pytest  # here, so benchmarks can import the paths without pytest

    if REQUIRED:
        pytest.fail(f"{message} (and {REQUIRE_VARIABLE}=1)")
    pytest.skip(message)


def _present(path: Path) -> Path:
    if not path.is_file():
        skip_unless_required(f"{path.name} missing from {path.parent}: run scripts/fetch-test-models")
    return path


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1, or skip (fail where required)."""
    return _present(SMOLLM2)


def gemma3_path() -> Path:
    """Gemma 3 270M Q4_K_M, or skip (fail where required)."""
    return _present(GEMMA3)
