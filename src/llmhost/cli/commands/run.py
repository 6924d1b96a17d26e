"""``llm run MODEL [PROMPT]``: one answer for a prompt (argument or piped stdin), else a chat REPL."""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperCommand

from llmhost.api.client import Client
from llmhost.cli import render
from llmhost.cli.answer import RunOptions, generate_parts, parse_think, stream_answer, writer
from llmhost.cli.images import extract_images, sees_images
from llmhost.cli.session import connect, require_model
from llmhost.errors import BadRequest

HELP = "Run a model."


class Command(TyperCommand):
    """``run``'s command: a bare ``--think`` means ``--think=true``, like Ollama's flag.

    Only ``--think=VALUE`` carries a value, so ``llm run MODEL --think "question"`` keeps its prompt.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, bare_think(args))


def bare_think(args: list[str]) -> list[str]:
    """``args`` with each bare ``--think`` before a ``--`` spelled ``--think=true``."""
    if "--" in args:
        cut = args.index("--")
        return bare_think(args[:cut]) + args[cut:]
    return ["--think=true" if arg == "--think" else arg for arg in args]


def command(
    ctx: typer.Context,
    model: str = typer.Argument(...),
    prompt: list[str] | None = typer.Argument(None, help="Prompt; without one (and no piped input) a chat starts."),
    format: str = typer.Option(None, "--format", help='Response format (e.g. "json").'),
    keepalive: str = typer.Option(None, "--keepalive", help='How long the model stays loaded (e.g. "5m").'),
    verbose: bool = typer.Option(False, "--verbose", help="Show timings for the response."),
    nowordwrap: bool = typer.Option(False, "--nowordwrap", help="Don't wrap words to the next line automatically."),
    insecure: bool = typer.Option(False, "--insecure", help="Use an insecure registry when pulling."),
    think: str = typer.Option(
        None, "--think", metavar="[=VALUE]",
        help="Enable thinking: true/false or low/medium/high for supported models (--think alone: true).",
    ),
    hidethinking: bool = typer.Option(False, "--hidethinking", help="Hide thinking output (if provided)."),
) -> None:
    opts = RunOptions(model, _check_format(format), _check_keep_alive(keepalive), verbose, not nowordwrap)
    opts.think, opts.hide_thinking = parse_think(think), hidethinking
    parts = list(prompt or [])
    interactive = sys.stdin.isatty() and not parts
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        parts[:0] = [piped] if piped else []
    if not sys.stdout.isatty():
        opts.wordwrap = False
    client = connect(ctx)
    info = require_model(client, model, insecure=insecure)
    if hidethinking and opts.think is None and "thinking" in (info.get("capabilities") or []):
        opts.think = True  # as Ollama: a thinking model still thinks, only the output is hidden
    if interactive:
        from llmhost.cli.repl import Repl

        Repl(client, opts, info).run()
    elif _embedding_only(info):
        render.print_json(client.embed(model, " ".join(parts), keep_alive=opts.keep_alive)["embeddings"][0])
    elif sees_images(info):
        generate(client, opts, *extract_images(" ".join(parts)))
    else:
        generate(client, opts, " ".join(parts))


def _check_format(value: str | None) -> str | None:
    if value not in (None, "", "json"):
        raise BadRequest(f'invalid format "{value}": only "json" is supported')
    return value or None


def _check_keep_alive(value: str | None) -> str | None:
    if value is None:
        return None
    from llmhost.units import parse_duration

    parse_duration(value)  # reject a typo here, not after the model loaded
    return value


def _embedding_only(info: dict) -> bool:
    capabilities = info.get("capabilities") or []
    return "embedding" in capabilities and "completion" not in capabilities


def generate(client: Client, opts: RunOptions, prompt: str, images: list[str] | None = None) -> None:
    """One streamed completion straight to stdout."""
    chunks = client.generate(
        opts.model, prompt, format=opts.format, keep_alive=opts.keep_alive, system=opts.system,
        options=opts.options, think=opts.think, images=images or None,
    )
    answer = stream_answer(chunks, writer(opts), generate_parts)
    if opts.verbose and answer.final:
        render.print_stats(answer.final)
