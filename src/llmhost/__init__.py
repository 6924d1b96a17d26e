"""llmhost: a local model daemon with a CLI, speaking Ollama's API."""

__version__ = "0.1.0"
