"""Output parsing in the runner: detokenized text in, answer / thinking / whole tool calls out.

    detokenizer ─▶ ThinkingSplitter ─thinking─▶ Parsed.thinking (dropped when think is False)
                                    └─answer──▶ ToolCallParser ─▶ Parsed.content, Parsed.tool_calls

Tool calls are looked for on the answer side only: a call written inside thinking is thinking.
``make_parser`` returns None when a request needs neither stage, so plain generation pays nothing.
The grammar that forces a call (``tool_grammar``) is not imported here: it needs llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmhost.engine.parsing.thinking import ThinkingSplitter, thinking_tags
from llmhost.engine.parsing.tool_calls import ToolCall, ToolCallParser, ToolFormat, detect_tool_format

__all__ = [
    "OutputParser",
    "Parsed",
    "ThinkingSplitter",
    "ToolCall",
    "ToolCallParser",
    "ToolFormat",
    "detect_tool_format",
    "make_parser",
    "thinking_tags",
]


@dataclass(frozen=True)
class Parsed:
    """What one feed releases: answer text, thinking text and whole tool calls."""

    content: str = ""
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()  # each {"function": {"name": str, "arguments": dict}}

    def __bool__(self) -> bool:
        return bool(self.content or self.thinking or self.tool_calls)


class OutputParser:
    """Feeds detokenized text (already free of stop strings and split UTF-8) and returns what can be
    released; ``finish`` flushes what is held at the end of generation."""

    def __init__(self, *, thinking: ThinkingSplitter | None = None, keep_thinking: bool = True,
                 tools: ToolCallParser | None = None):
        self._thinking = thinking
        self._keep_thinking = keep_thinking
        self._tools = tools

    def feed(self, text: str) -> Parsed:
        thinking, content = self._thinking.feed(text) if self._thinking else ("", text)
        calls: list[ToolCall] = []
        if self._tools is not None:
            content, calls = self._tools.feed(content)
        return self._parsed(content, thinking, calls)

    def finish(self) -> Parsed:
        """End of generation: flush everything held (an unfinished or malformed call becomes content)."""
        thinking, content = self._thinking.finish() if self._thinking else ("", "")
        calls: list[ToolCall] = []
        if self._tools is not None:
            content, calls = self._tools.feed(content)
            rest, more = self._tools.finish()
            content, calls = content + rest, calls + more
        return self._parsed(content, thinking, calls)

    def _parsed(self, content: str, thinking: str, calls: list[ToolCall]) -> Parsed:
        return Parsed(content, thinking if self._keep_thinking else "", tuple(calls))


def make_parser(template: str, *, prompt: str, think: bool | str | None, tools: bool) -> OutputParser | None:
    """The parser for one request, or None when there is nothing to parse.

    ``template``: the chat-template source the prompt was rendered with; ``prompt``: the rendered
    prompt (a prompt ending with the open marker starts the output inside thinking); ``think``:
    True (or a level such as "high") splits thinking out and returns it, False splits it out and
    drops it (a model that thinks anyway must not leak it into the answer), None does no thinking
    parsing (the template has no thinking); ``tools``: tools were offered, so calls are parsed.
    """
    if think is None and not tools:
        return None
    splitter = None
    if think is not None:
        open_tag, close_tag = thinking_tags(template)
        splitter = ThinkingSplitter(open_tag, close_tag, in_thinking=prompt.rstrip().endswith(open_tag))
    calls = ToolCallParser(detect_tool_format(template)) if tools else None
    return OutputParser(thinking=splitter, keep_thinking=think is not False, tools=calls)
