"""Engine test fixtures: the tiny models from tests/support (real-model paths come from tests/conftest.py)."""

from tests.support.fixtures import tiny_model, tiny_model_no_template, tiny_tokenizer  # noqa: F401
