"""Tests of the CLI and the API client against a fake daemon."""
