"""``llm run MODEL [PROMPT]``: one answer for a prompt (argument or piped stdin), else a chat REPL."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from typing import Any, Generator, Optional

import typer

from llmhost.api.client import Client
from llmhost.cli import render
from llmhost.cli.session import connect, require_model
from llmhost.errors import BadRequest

HELP = "Run a model."


@dataclass
class RunOptions:
    """How answers are requested and printed; the REPL changes these with /set."""

    model: str
    format: str | None = None
    keep_alive: str | None = None
    verbose: bool = False
    wordwrap: bool = True
    system: str | None = None
    options: dict[str, Any] | None = None


def command(
    ctx: typer.Context,
    model: str = typer.Argument(...),
    prompt: Optional[list[str]] = typer.Argument(None, help="Prompt; without one (and no piped input) a chat starts."),
    format: str = typer.Option(None, "--format", help='Response format (e.g. "json").'),
    keepalive: str = typer.Option(None, "--keepalive", help='How long the model stays loaded (e.g. "5m").'),
    verbose: bool = typer.Option(False, "--verbose", help="Show timings for the response."),
    nowordwrap: bool = typer.Option(False, "--nowordwrap", help="Don't wrap words to the next line automatically."),
    insecure: bool = typer.Option(False, "--insecure", help="Use an insecure registry when pulling."),
) -> None:
    opts = RunOptions(model, _check_format(format), _check_keep_alive(keepalive), verbose, not nowordwrap)
    parts = list(prompt or [])
    interactive = sys.stdin.isatty() and not parts
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        parts[:0] = [piped] if piped else []
    if not sys.stdout.isatty():
        opts.wordwrap = False
    client = connect(ctx)
    info = require_model(client, model, insecure=insecure)
    if interactive:
        from llmhost.cli.repl import Repl

        Repl(client, opts, info).run()
    elif _embedding_only(info):
        render.print_json(client.embed(model, " ".join(parts), keep_alive=opts.keep_alive)["embeddings"][0])
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


def writer(opts: RunOptions) -> render.TokenWriter:
    width = shutil.get_terminal_size().columns if opts.wordwrap else None
    return render.TokenWriter(sys.stdout, width)


def generate(client: Client, opts: RunOptions, prompt: str) -> None:
    """One streamed completion straight to stdout."""
    chunks = client.generate(
        opts.model, prompt, format=opts.format, keep_alive=opts.keep_alive, system=opts.system, options=opts.options
    )
    final, _ = stream_text(chunks, writer(opts), lambda c: c.get("response") or "")
    if opts.verbose and final:
        render.print_stats(final)


def stream_text(
    chunks: Generator[dict, None, None], out: render.TokenWriter, text_of, *, interruptible: bool = False
) -> tuple[dict | None, str]:
    """Print each chunk's text as it arrives; returns the final (done) chunk and the whole text.

    With ``interruptible``, Ctrl+C ends the answer early instead of the program.
    """
    final, parts = None, []
    try:
        for chunk in chunks:
            parts.append(text_of(chunk))
            out.write(parts[-1])
            if chunk.get("done"):
                final = chunk
    except KeyboardInterrupt:
        if not interruptible:
            raise
    finally:
        chunks.close()  # on Ctrl+C this drops the connection, and the daemon cancels the request
        out.finish()
    return final, "".join(parts)
