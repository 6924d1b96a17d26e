"""``llm rm MODEL...``: delete models (the daemon stops a runner no remaining model uses)."""

from __future__ import annotations

import typer

from llmhost.cli.session import connect

HELP = "Remove a model."


def command(ctx: typer.Context, models: list[str] = typer.Argument(..., metavar="MODEL...")) -> None:
    client = connect(ctx)
    for model in models:
        client.delete(model)
        typer.echo(f"deleted '{model}'")
