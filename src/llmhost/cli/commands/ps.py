"""``llm ps``: the models loaded now."""

from __future__ import annotations

import typer

from llmhost.cli import render
from llmhost.cli.session import connect

HELP = "List running models: context, parallel slots in use, queue depth and KV cache-hit rate."


def command(ctx: typer.Context, json_: bool = typer.Option(False, "--json", help="Print the daemon's JSON.")) -> None:
    render.print_models(connect(ctx).ps(), render.ps_table, as_json=json_)
