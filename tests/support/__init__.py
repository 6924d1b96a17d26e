"""Shared test helpers: tiny GGUF models, a real-runner process harness, pytest fixtures."""
