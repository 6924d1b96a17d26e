"""Fixtures: a fake daemon on a short unix-socket path (tests/support/fixtures.py), and a CLI runner."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from llmhost.cli.app import app
from tests.support.fixtures import daemon, env, short_dir  # noqa: F401


class Cli:
    """Runs ``llm ARGS`` in-process; never starts a real daemon."""

    def __init__(self):
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None):
        return self.runner.invoke(app, ["--no-autostart", *args], input=input)


@pytest.fixture
def llm() -> Cli:
    return Cli()
