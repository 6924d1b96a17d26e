"""``llm run MODEL [PROMPT]``: one answer for a prompt (argument or piped stdin), else a chat REPL."""

from __future__ import annotations

import base64
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperCommand

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
    think: bool | str | None = None  # None: not sent, the daemon's default applies
    hide_thinking: bool = False


@dataclass(frozen=True)
class Answer:
    """What one streamed answer said."""

    final: dict | None  # the done chunk; None when the answer was cut short
    content: str
    thinking: str


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


def parse_think(value: str | None) -> bool | str | None:
    """A ``think`` value from its text: true/false or a level; None stays None (not sent)."""
    if value is None:
        return None
    from llmhost.api.tools import THINK_LEVELS

    word = value.strip().lower()
    if word in ("", "true", "false"):  # "--think=" is true too, as in Ollama
        return word != "false"
    if word in THINK_LEVELS:
        return word
    choices = ", ".join(("true", "false", *THINK_LEVELS))
    raise BadRequest(f'invalid value for --think: "{value}" (must be one of {choices})')


def _check_keep_alive(value: str | None) -> str | None:
    if value is None:
        return None
    from llmhost.units import parse_duration

    parse_duration(value)  # reject a typo here, not after the model loaded
    return value


def _embedding_only(info: dict) -> bool:
    capabilities = info.get("capabilities") or []
    return "embedding" in capabilities and "completion" not in capabilities


def sees_images(info: dict) -> bool:
    """Whether image paths in a prompt are attached: the model has ``vision`` (as Ollama's CLI)."""
    return "vision" in (info.get("capabilities") or [])


# Ollama's CLI (cmd/interactive.go extractFileNames): a path that starts with /, ./ or \ (after an
# optional drive letter), may hold spaces and backslash-escaped characters, and ends in an image's
# extension. Text that only looks like one is left alone when no such file exists.
_IMAGE_PATH = re.compile(r"(?:[a-zA-Z]:)?(?:\./|/|\\)[\S\\ ]+?\.(?i:jpg|jpeg|png|webp)\b")
_ESCAPED = re.compile(r"\\([ ()\[\]{}$&;'\\*?~])")  # Ollama's normalizeFilePath: "\ " is " "...
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG; WebP: RIFF....WEBP


def image_paths(text: str) -> list[str]:
    """What looks like an image's path in ``text``, as written (escapes kept)."""
    return _IMAGE_PATH.findall(text)


def extract_images(prompt: str) -> tuple[str, list[str]]:
    """Ollama's ``extractFileData``: every image path in ``prompt`` naming a file is read (base64 for
    ``images``), said on stderr (``Added image '…'``) and taken out of the text."""
    images = []
    for found in image_paths(prompt):
        path = _ESCAPED.sub(r"\1", found)
        data = read_image(path)
        if data is None:
            continue
        sys.stderr.write(f"Added image '{path}'\n")
        prompt = prompt.replace(f"'{path}'", "").replace(f"'{found}'", "").replace(found, "")
        images.append(base64.b64encode(data).decode("ascii"))
    return prompt.strip(), images


def read_image(path: str) -> bytes | None:
    """The file's bytes; None when there is no such file. One that is not a JPEG, PNG or WebP image,
    or is larger than the daemon takes, is an error (as in Ollama's CLI, before anything is sent)."""
    from llmhost.api.types import MAX_IMAGE_BYTES

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BadRequest(f"couldn't process file '{path}': {e.strerror}") from None
    webp = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    if not (data.startswith(_IMAGE_MAGIC) or webp):
        raise BadRequest(f"couldn't process file '{path}': not a JPEG, PNG or WebP image")
    if len(data) > MAX_IMAGE_BYTES:
        raise BadRequest(f"couldn't process file '{path}': larger than {MAX_IMAGE_BYTES >> 20} MiB, "
                         "the most an image may be")
    return data


def writer(opts: RunOptions) -> render.AnswerWriter:
    width = shutil.get_terminal_size().columns if opts.wordwrap else None
    return render.AnswerWriter(sys.stdout, width, show_thinking=not opts.hide_thinking, spinner=True)


def generate_parts(chunk: dict) -> tuple[str, str, list]:
    """A ``/api/generate`` chunk's thinking, text and tool calls."""
    return chunk.get("thinking") or "", chunk.get("response") or "", chunk.get("tool_calls") or []


def chat_parts(chunk: dict) -> tuple[str, str, list]:
    """A ``/api/chat`` chunk's thinking, text and tool calls."""
    message = chunk.get("message") or {}
    return message.get("thinking") or "", message.get("content") or "", message.get("tool_calls") or []


def generate(client: Client, opts: RunOptions, prompt: str, images: list[str] | None = None) -> None:
    """One streamed completion straight to stdout."""
    chunks = client.generate(
        opts.model, prompt, format=opts.format, keep_alive=opts.keep_alive, system=opts.system,
        options=opts.options, think=opts.think, images=images or None,
    )
    answer = stream_answer(chunks, writer(opts), generate_parts)
    if opts.verbose and answer.final:
        render.print_stats(answer.final)


def stream_answer(
    chunks: Iterator[dict] | dict,
    out: render.AnswerWriter,
    parts_of: Callable[[dict], tuple[str, str, list]],
    *,
    interruptible: bool = False,
) -> Answer:
    """Print each chunk's thinking, text and tool calls as they arrive; returns what was said.

    With ``interruptible``, Ctrl+C ends the answer early instead of the program.
    """
    assert not isinstance(chunks, dict), "asked with stream=True"
    final, content, thinking = None, [], []
    try:
        for chunk in chunks:
            thought, text, calls = parts_of(chunk)
            thinking.append(thought)
            content.append(text)
            out.thinking(thought)
            out.content(text)
            out.tool_calls(calls)
            if chunk.get("done"):
                final = chunk
    except KeyboardInterrupt:
        if not interruptible:
            raise
    finally:
        getattr(chunks, "close", lambda: None)()  # a generator: on Ctrl+C this drops the connection, and the daemon cancels the request
        out.finish()
    return Answer(final, "".join(content), "".join(thinking))
