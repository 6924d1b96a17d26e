"""Engine test fixtures: the tiny models from tests/support (real-model paths come from tests/conftest.py)."""

import pytest

from llmhost.engine.llamacpp import Model
from tests.support.fixtures import tiny_model, tiny_model_no_template, tiny_tokenizer  # noqa: F401


@pytest.fixture(scope="module")
def model(tiny_model):
    """The tiny model loaded once per test module."""
    m = Model(tiny_model)
    yield m
    m.close()
