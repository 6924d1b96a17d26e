"""Streaming tool-call parsing for the call formats real models use.

    hermes   <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>   (Hermes, Qwen)
    llama3   [<|python_tag|>]{"name": ..., "parameters": {...}}; {...}       (Llama 3.x)
    mistral  [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
             [TOOL_CALLS]name[ARGS]{...}                                     (newer Mistral)
    json     a JSON call object, or an array of them, opening the answer     (anything else)

Answer text streams out as it comes. Once the output may be turning into a call (a marker, or a
``{``/``[`` opening the answer where the format allows a bare call), it is held back until the JSON
closes; each call is then released whole, never half a JSON. Text that looked like a call but is
not one (invalid JSON, no name) is released as answer text as soon as that is certain, or at
``finish``. The JSON is scanned incrementally (each character once), so a long call costs linear
time however finely it is fed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from llmhost.engine.gotemplate import parsed as go_parsed
from llmhost.engine.gotemplate import tool_call_tag
from llmhost.engine.parsing.thinking import partial_marker_len
from llmhost.engine.templates import is_go_template

ToolCall = dict[str, Any]  # {"function": {"name": str, "arguments": dict}}


class ToolFormat(str, Enum):
    """How a model family writes tool calls."""

    HERMES = "hermes"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"
    JSON = "json"


def detect_tool_format(template: str) -> ToolFormat:
    """The call format a chat template teaches its model (``json`` when it names no family's marker).

    A Go template (Ollama's) is asked as Ollama asks it: the text its ``{{ if .ToolCalls }}`` block
    writes first is the tag that opens a call (``{``, bare JSON, when it writes none)."""
    tag = _go_tool_call_tag(template)
    for marker, fmt in _GO_TAGS:
        if marker in tag:
            return fmt
    if "<tool_call>" in template:
        return ToolFormat.HERMES
    if "[TOOL_CALLS]" in template:
        return ToolFormat.MISTRAL
    if "<|python_tag|>" in template or "ipython" in template or '"parameters"' in template:
        return ToolFormat.LLAMA3
    return ToolFormat.JSON


_GO_TAGS = (("<tool_call>", ToolFormat.HERMES), ("[TOOL_CALLS]", ToolFormat.MISTRAL),
            ("<|python_tag|>", ToolFormat.LLAMA3))


def _go_tool_call_tag(template: str) -> str:
    """The tool-call tag of a Go template, "" for a Jinja one (or a Go one that does not parse)."""
    if not is_go_template(template):
        return ""
    parsed_template = go_parsed(template)
    return tool_call_tag(parsed_template) if parsed_template is not None else ""


@dataclass(frozen=True)
class _Syntax:
    markers: tuple[str, ...] = ()  # open a call anywhere in the answer
    closer: str = ""  # follows each call's JSON
    bare_at_start: bool = False  # a JSON object/array opening the answer is a call
    chained: bool = False  # further calls may follow a call, separated by ";", "," or whitespace
    named_args: bool = False  # the marker may be followed by "name[ARGS]{arguments}"


# Mistral's and Llama's markers are control tokens; should a detokenizer drop them, the bare JSON
# they introduce is still recognised at the start of the answer.
_SYNTAX = {
    ToolFormat.HERMES: _Syntax(markers=("<tool_call>",), closer="</tool_call>"),
    ToolFormat.LLAMA3: _Syntax(markers=("<|python_tag|>",), bare_at_start=True, chained=True),
    ToolFormat.MISTRAL: _Syntax(markers=("[TOOL_CALLS]",), bare_at_start=True, named_args=True),
    ToolFormat.JSON: _Syntax(bare_at_start=True, chained=True),
}
_ARGS_MARKER = "[ARGS]"
_CALL_ID_MARKER = "[CALL_ID]"
_MAX_NAME = 256
_SEPARATORS = " \t\r\n;,"
_JSON_SPECIAL = re.compile(r'[{}\[\]"\\]')


class _State(Enum):
    START = "start"  # nothing but whitespace yet (formats that allow a bare call at the start)
    ANSWER = "answer"  # answer text, watching for a marker
    MARKER = "marker"  # after a marker: what follows decides JSON call or name[ARGS]
    NAME = "name"  # reading "name" up to [ARGS]
    JSON = "json"  # inside a call's JSON
    CLOSER = "closer"  # after a call's JSON, expecting the closing marker
    NEXT = "next"  # after a call: another chained call, or the rest of the answer


class _JsonScanner:
    """Finds where a JSON object/array closes, fed one piece at a time, each character looked at once."""

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._skip = 0  # characters of the next piece that an escape at the end of this one covers

    def end(self, piece: str) -> int:
        """Index in ``piece`` just past the value's closing bracket, or -1 while it is still open."""
        pos, self._skip = self._skip, 0
        while (m := _JSON_SPECIAL.search(piece, pos)) is not None:
            c, pos = m.group(), m.end()
            if c == "\\":
                pos += 1  # an escape covers the next character, whatever it is
            elif c == '"':
                self._in_string = not self._in_string
            elif self._in_string:
                continue
            elif c in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth <= 0:
                    return pos
        self._skip = max(0, pos - len(piece))
        return -1


class ToolCallParser:
    """Feeds of answer text in, (answer text, whole tool calls) that can be released now out."""

    def __init__(self, fmt: ToolFormat):
        self._syntax = _SYNTAX[fmt]
        self._state = _State.START if self._syntax.bare_at_start else _State.ANSWER
        self._held = ""  # text not yet released
        self._region = ""  # consumed text of an unfinished call (marker, whitespace, name)
        self._name: str | None = None  # the name read before [ARGS]
        self._scanner = _JsonScanner()
        self._json: list[str] = []  # scanned pieces of the JSON being read (joined once, when it closes)
        self._bare = False  # the JSON being read had no marker before it
        self._said = False  # some answer text has been released

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Add answer text; return the text and the whole calls that are certain now."""
        self._held += text
        content: list[str] = []
        calls: list[ToolCall] = []
        while self._step(content, calls):
            pass
        released = "".join(content)
        self._said = self._said or bool(released)
        return released, calls

    def finish(self) -> tuple[str, list[ToolCall]]:
        """End of output: an unfinished call is released as the text it was."""
        held, self._held = self._held, ""
        state, self._state = self._state, _State.ANSWER
        if state in (_State.START, _State.ANSWER):
            return held, []
        if state in (_State.MARKER, _State.NAME, _State.JSON):
            return self._region + "".join(self._json) + held, []
        return "", []  # after a call: only whitespace or part of its closing marker is left

    def _step(self, content: list[str], calls: list[ToolCall]) -> bool:
        """Advance one state on the held text; True when another step may release more."""
        state = self._state
        if state is _State.START:
            return self._start()
        if state is _State.ANSWER:
            return self._answer(content)
        if state is _State.MARKER:
            return self._after_marker(content)
        if state is _State.NAME:
            return self._read_name(content)
        if state is _State.JSON:
            return self._read_json(content, calls)
        if state is _State.CLOSER:
            return self._read_closer()
        return self._after_call(content)

    def _start(self) -> bool:
        stripped = self._held.lstrip()
        markers = self._syntax.markers
        if not stripped or any(m.startswith(stripped) and m != stripped for m in markers):
            return False  # a marker such as "[TOOL_CALLS]" may still be arriving: not a bare "["
        if stripped[0] in "{[" and not any(stripped.startswith(m) for m in markers):
            self._begin_json(self._held[: len(self._held) - len(stripped)], stripped, bare=True)
        else:
            self._state = _State.ANSWER
        return True

    def _answer(self, content: list[str]) -> bool:
        held, markers = self._held, self._syntax.markers
        found = [(i, m) for m in markers if (i := held.find(m)) >= 0]
        if found:
            i, marker = min(found)
            before = held[:i].rstrip()  # the blank line before a call is not answer text
            content.append(before)
            self._region = held[len(before):i + len(marker)]  # given back should it be no call
            self._held, self._state = held[i + len(marker):], _State.MARKER
            return True
        # Hold a possible start of a marker and the whitespace before it.
        cut = len(held[: len(held) - partial_marker_len(held, *markers)].rstrip()) if markers else len(held)
        content.append(held[:cut])
        self._held = held[cut:]
        return False

    def _after_marker(self, content: list[str]) -> bool:
        stripped = self._held.lstrip()
        if not stripped:
            return False
        space = self._held[: len(self._held) - len(stripped)]
        if stripped[0] in "{[":
            self._begin_json(self._region + space, stripped, bare=False)
        elif self._syntax.named_args and self._name is None:
            self._region, self._held, self._state = self._region + space, stripped, _State.NAME
        else:
            self._not_a_call(content)
        return True

    def _read_name(self, content: list[str]) -> bool:
        end = self._held.find(_ARGS_MARKER)
        if end < 0:
            if len(self._held) > _MAX_NAME or any(c.isspace() for c in self._held):
                self._not_a_call(content)
                return True
            return False
        name = self._held[:end].split(_CALL_ID_MARKER)[0]
        if not name:
            self._not_a_call(content)
            return True
        end += len(_ARGS_MARKER)
        self._region += self._held[:end]
        self._name, self._held, self._state = name, self._held[end:], _State.MARKER
        return True

    def _begin_json(self, region: str, text: str, *, bare: bool) -> None:
        self._region, self._held, self._bare = region, text, bare
        self._scanner, self._json = _JsonScanner(), []
        self._state = _State.JSON

    def _read_json(self, content: list[str], calls: list[ToolCall]) -> bool:
        end = self._scanner.end(self._held)
        if end < 0:
            self._json.append(self._held)
            self._held = ""
            return False
        self._json.append(self._held[:end])
        raw, self._held, self._json = "".join(self._json), self._held[end:], []
        found = self._decode(raw)
        if found is None:
            content.append(self._region + raw)
            self._region, self._name, self._state = "", None, _State.ANSWER
            return True
        calls.extend(found)
        self._region, self._name = "", None
        self._state = _State.CLOSER if self._syntax.closer else _State.NEXT
        return True

    def _decode(self, raw: str) -> list[ToolCall] | None:
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        if self._name is not None:
            args = _arguments(value)
            return None if args is None else [_call(self._name, args)]
        return calls_from_json(value, require_arguments=self._bare)

    def _read_closer(self) -> bool:
        closer = self._syntax.closer
        stripped = self._held.lstrip()
        if stripped.startswith(closer):
            self._held, self._state = stripped[len(closer):], _State.NEXT
            return True
        if closer.startswith(stripped):  # empty, or the closer still arriving
            return False
        self._state = _State.ANSWER  # a call without its closer: what follows is answer text
        return True

    def _after_call(self, content: list[str]) -> bool:
        stripped = self._held.lstrip(_SEPARATORS if self._syntax.chained else None)
        if not stripped:
            return False  # only whitespace after the last call is dropped
        if self._syntax.chained and stripped[0] in "{[":
            self._begin_json("", stripped, bare=True)
            return True
        # Answer text after the calls keeps the whitespace that parts it from the text before them.
        space = self._held[: len(self._held) - len(stripped)] if self._said or any(content) else ""
        self._held = "".join(c for c in space if c.isspace()) + stripped
        self._state = _State.ANSWER
        return True

    def _not_a_call(self, content: list[str]) -> None:
        """What followed a marker is no call: the marker is answer text after all."""
        content.append(self._region)
        self._region, self._name, self._state = "", None, _State.ANSWER


def calls_from_json(value: Any, *, require_arguments: bool = False) -> list[ToolCall] | None:
    """The calls a decoded JSON value holds (one call object, or a non-empty array of them), or None.

    ``require_arguments``: a bare JSON answer is only a call when it has "arguments"/"parameters",
    so that an answer like ``{"name": "Ada"}`` stays an answer.
    """
    items = value if isinstance(value, list) else [value]
    calls = [_call_from_object(item, require_arguments) for item in items]
    if not calls or any(call is None for call in calls):
        return None
    return calls  # type: ignore[return-value]


def _call_from_object(obj: Any, require_arguments: bool) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    if "name" not in obj and isinstance(obj.get("function"), dict):
        obj = obj["function"]  # OpenAI's {"type": "function", "function": {...}}
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    key = next((k for k in ("arguments", "parameters") if k in obj), None)
    if key is None and require_arguments:
        return None
    args = _arguments(obj.get(key) if key else None)
    return None if args is None else _call(name.strip(), args)


def _arguments(value: Any) -> dict[str, Any] | None:
    """Arguments as an object: models write an object, or a JSON string holding one."""
    if value is None:
        return {}
    if isinstance(value, str):
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _call(name: str, arguments: dict[str, Any]) -> ToolCall:
    return {"function": {"name": name, "arguments": arguments}}
