"""One answer, streamed to the terminal: the options it is asked with (the REPL changes them with
/set), the ``--think`` value, and the printing of each chunk's thinking, text and tool calls.
Shared by ``llm run`` and its REPL."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from llmhost.cli import render
from llmhost.errors import BadRequest


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
