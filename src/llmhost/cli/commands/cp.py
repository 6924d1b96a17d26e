"""``llm cp SRC DST``."""

from __future__ import annotations

import typer

from llmhost.cli.session import connect

HELP = "Copy a model."


def command(ctx: typer.Context, source: str = typer.Argument(...), destination: str = typer.Argument(...)) -> None:
    connect(ctx).copy(source, destination)
    typer.echo(f"copied '{source}' to '{destination}'")
