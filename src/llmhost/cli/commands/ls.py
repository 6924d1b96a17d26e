"""``llm list`` / ``llm ls``: the local models."""

from __future__ import annotations

import typer

from llmhost.cli import render
from llmhost.cli.session import connect

HELP = "List models."


def command(ctx: typer.Context, json_: bool = typer.Option(False, "--json", help="Print the daemon's JSON.")) -> None:
    render.print_models(connect(ctx).list(), render.list_table, as_json=json_)
