"""llmhost: a local model daemon with a CLI, speaking Ollama's API."""

__version__ = "0.1.0"
# The Ollama release whose API llmhost implements: what /api/version reports as "version", since
# clients gate features on it (llmhost's own version is beside it, as "llmhost").
OLLAMA_API_VERSION = "0.32.15"
