"""Fixtures: a fake daemon on a short unix-socket path (tests/support/fixtures.py)."""

from tests.support.fixtures import daemon, env, short_dir  # noqa: F401
