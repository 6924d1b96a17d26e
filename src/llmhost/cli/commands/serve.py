"""``llm serve``: run the daemon in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

HELP = "Start the llmhost daemon (Ollama's API on a unix socket and on LLMHOST_HOST)."


def epilog() -> str:
    """The environment variables the daemon reads, one paragraph each (typer keeps blank lines)."""
    from llmhost.config import describe_variables

    return "Environment variables:\n\n" + "\n\n".join(describe_variables().splitlines())


def command() -> None:
    from llmhost.config import Settings
    from llmhost.daemon.serve import serve

    serve(Settings.from_env())
