"""``llm show MODEL``: what a model is made of."""

from __future__ import annotations

import sys

import typer

from llmhost.cli import render
from llmhost.cli.session import connect
from llmhost.errors import BadRequest

HELP = "Show information for a model."

FIELDS = ("license", "modelfile", "parameters", "template", "system")


def command(
    ctx: typer.Context,
    model: str = typer.Argument(...),
    license: bool = typer.Option(False, "--license", help="Show license of a model."),
    modelfile: bool = typer.Option(False, "--modelfile", help="Show Modelfile of a model."),
    parameters: bool = typer.Option(False, "--parameters", help="Show parameters of a model."),
    template: bool = typer.Option(False, "--template", help="Show template of a model."),
    system: bool = typer.Option(False, "--system", help="Show system message of a model."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show detailed model information."),
    json_: bool = typer.Option(False, "--json", help="Print the daemon's JSON."),
) -> None:
    chosen = [name for name, flag in zip(FIELDS, (license, modelfile, parameters, template, system)) if flag]
    if len(chosen) > 1:
        raise BadRequest("only one of " + ", ".join(f"'--{f}'" for f in FIELDS) + " can be specified")
    info = connect(ctx).show(model, verbose=verbose)
    if json_:
        render.print_json(info)
    elif chosen:
        text = info.get(chosen[0]) or ""
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    else:
        sys.stdout.write(render.show_info(info, verbose=verbose))
