"""``llm push MODEL``: upload a model to a registry with one progress bar per blob."""

from __future__ import annotations

import typer

from llmhost.cli import render
from llmhost.cli.session import connect

HELP = "Push a model to a registry (host/namespace/model:tag; a plain-http registry needs --insecure)."


def command(
    ctx: typer.Context,
    model: str = typer.Argument(...),
    insecure: bool = typer.Option(False, "--insecure", help="Use an insecure registry (plain http)."),
) -> None:
    render.progress_events(connect(ctx).push(model, insecure=insecure))
