"""Streaming split of a model's thinking from its answer.

A thinking block is ``<open>…<close>`` at the very start of the output (after whitespace), or
everything up to ``<close>`` when the rendered prompt already opened it (a template that ends the
generation prompt with ``<think>\\n``). Text that could still become a marker is held back, so a
marker split across feeds (``"<thi" + "nk>"``) never leaks; so is the whitespace at the end of the
thinking, which is dropped with the marker. Whitespace right after either marker is dropped too, so
neither the thinking nor the answer starts with the blank lines models put there.
"""

from __future__ import annotations

from enum import Enum

from llmhost.engine.gotemplate import parsed as go_parsed
from llmhost.engine.gotemplate import thinking_tags as go_thinking_tags
from llmhost.engine.templates import is_go_template

# Marker pairs that chat templates use; the first one a template mentions wins.
TAG_PAIRS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<thinking>", "</thinking>"),
    ("[THINK]", "[/THINK]"),
)


def thinking_tags(template: str) -> tuple[str, str]:
    """The (open, close) thinking markers a chat template uses; ``<think>``/``</think>`` when it names none.

    A Go template (Ollama's) is asked as Ollama asks it: the texts around its ``.Thinking`` in the
    range over ``.Messages`` (``engine.gotemplate.thinking_tags``)."""
    if is_go_template(template) and (parsed_template := go_parsed(template)) is not None:
        open_tag, close_tag = go_thinking_tags(parsed_template)
        if open_tag and close_tag:
            return open_tag, close_tag
    found = [(template.find(open_tag), open_tag, close_tag) for open_tag, close_tag in TAG_PAIRS
             if open_tag in template]
    if not found:
        return TAG_PAIRS[0]
    _, open_tag, close_tag = min(found)
    return open_tag, close_tag


def partial_marker_len(text: str, *markers: str) -> int:
    """Length of the longest end of ``text`` that is the start (not the whole) of one of ``markers``:
    what must be held back until the next feed tells whether the marker completes."""
    longest = 0
    for marker in markers:
        for n in range(min(len(text), len(marker) - 1), longest, -1):
            if text.endswith(marker[:n]):
                longest = n
                break
    return longest


class _State(Enum):
    START = "start"  # only whitespace (or the start of the open marker) seen so far
    OPENED = "opened"  # just after the open marker: dropping whitespace
    THINKING = "thinking"
    CLOSED = "closed"  # just after the close marker: dropping whitespace
    ANSWER = "answer"  # thinking is over (or never began): everything is answer text


class ThinkingSplitter:
    """Feeds of output text in, ``(thinking, answer)`` text that can be released now out."""

    def __init__(self, open_tag: str = "<think>", close_tag: str = "</think>", *, in_thinking: bool = False):
        """``in_thinking``: the prompt opened the thinking block, so the output starts inside it."""
        self._open, self._close = open_tag, close_tag
        self._prompt_opened = in_thinking
        self._state = _State.START
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        """Add output text; return the (thinking, answer) text that is certain now."""
        self._held += text
        thinking: list[str] = []
        answer: list[str] = []
        while self._step(thinking, answer):
            pass
        return "".join(thinking), "".join(answer)

    def finish(self) -> tuple[str, str]:
        """End of output: release what is held (an unclosed block stays thinking)."""
        held, self._held = self._held, ""
        state, self._state = self._state, _State.ANSWER
        if state is _State.START:
            return (held.strip(), "") if self._prompt_opened else ("", held)
        if state is _State.THINKING:
            return held.rstrip(), ""
        return "", held if state is _State.ANSWER else ""

    def _step(self, thinking: list[str], answer: list[str]) -> bool:
        """Advance one state on the held text; True when another step may release more."""
        state = self._state
        if state is _State.START:
            return self._start()
        if state in (_State.OPENED, _State.CLOSED):
            return self._drop_whitespace(_State.THINKING if state is _State.OPENED else _State.ANSWER)
        if state is _State.THINKING:
            return self._thinking(thinking)
        answer.append(self._held)
        self._held = ""
        return False

    def _start(self) -> bool:
        stripped = self._held.lstrip()
        if stripped.startswith(self._open):
            # A model may repeat the marker the prompt already opened: it is still one block.
            self._held, self._state = stripped[len(self._open):], _State.OPENED
            return True
        if self._open.startswith(stripped):  # empty, or a marker still arriving
            return False
        if self._prompt_opened:
            self._held, self._state = stripped, _State.THINKING
        else:
            self._state = _State.ANSWER  # no thinking: the answer keeps its leading whitespace
        return True

    def _drop_whitespace(self, then: _State) -> bool:
        self._held = self._held.lstrip()
        if not self._held:
            return False
        self._state = then
        return True

    def _thinking(self, thinking: list[str]) -> bool:
        held = self._held
        end = held.find(self._close)
        if end >= 0:
            thinking.append(held[:end].rstrip())
            self._held, self._state = held[end + len(self._close):], _State.CLOSED
            return True
        # Hold a possible start of the close marker and the whitespace before it.
        cut = len(held[: len(held) - partial_marker_len(held, self._close)].rstrip())
        thinking.append(held[:cut])
        self._held = held[cut:]
        return False
