"""``llm stop MODEL``: unload a model now."""

from __future__ import annotations

import typer

from llmhost.cli.session import connect, unload
from llmhost.errors import NotFound

HELP = "Stop a running model."


def command(ctx: typer.Context, model: str = typer.Argument(...)) -> None:
    try:
        unload(connect(ctx), model)
    except NotFound:
        raise NotFound(f'couldn\'t find model "{model}" to stop') from None
