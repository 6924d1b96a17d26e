"""``llm rm MODEL...``: unload each model if it is loaded, then delete it."""

from __future__ import annotations

import typer

from llmhost.cli.session import connect, same_model, unload

HELP = "Remove a model."


def command(ctx: typer.Context, models: list[str] = typer.Argument(..., metavar="MODEL...")) -> None:
    client = connect(ctx)
    loaded = [m.get("name") or m.get("model", "") for m in client.ps().get("models") or []]
    for model in models:
        if any(same_model(model, name) for name in loaded):
            unload(client, model)
        client.delete(model)
        typer.echo(f"deleted '{model}'")
