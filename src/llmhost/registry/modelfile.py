"""Modelfiles: parsing the text ``llm create -f`` reads, and rendering the one ``show`` prints.

Syntax (as Ollama's): one command per line, case-insensitive; ``#`` starts a comment line; a value is
the rest of the line, a ``"quoted"`` string, or a ``\"\"\"`` string that may span lines.

    FROM <model name or GGUF path>        PARAMETER <name> <value>      (``stop`` may repeat)
    FROM <projector GGUF path>            (a second FROM, as Ollama's: a vision model's ``mmproj``)
    TEMPLATE <text>    SYSTEM <text>      MESSAGE <system|user|assistant> <text>
    ADAPTER <path>     LICENSE <text>     (ADAPTER and LICENSE may repeat)

PARAMETER names, types and bounds are the model options of ``api.option_table``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmhost.api.options import is_list_option, merge_parameters, parse_parameter
from llmhost.errors import InvalidOption, ModelfileError

if TYPE_CHECKING:
    from llmhost.registry.record import ModelRecord

COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "parameter", "message")
ROLES = ("system", "user", "assistant")
_COMMAND_ERROR = ('command must be one of "from", "license", "template", "system", "adapter", "draft", "parameter",'
                  ' or "message"')
# llmhost has no draft-model speculation: said at create time, before anything is uploaded or stored.
DRAFT_UNSUPPORTED = ("DRAFT models are not supported yet: llmhost drafts by prompt lookup instead, with no draft "
                     "model (PARAMETER draft_num_predict 8, or the draft_num_predict option)")
_ROLE_ERROR = 'role must be one of "system", "user", or "assistant"'
_WORD = re.compile(r"(\S+)(?:\s+(.*))?", re.DOTALL)


@dataclass
class Modelfile:
    """The commands of a parsed Modelfile; ``parameters`` are typed, ``stop`` accumulated."""

    from_: str | None = None
    extra_from: list[str] = field(default_factory=list)  # later FROM lines: a projector GGUF beside the model
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    drafts: list[str] = field(default_factory=list)  # DRAFT models (parsed; llmhost cannot run them yet)


def parse_modelfile(text: str) -> Modelfile:
    """Parse Modelfile text; raises ModelfileError ``(line N): ...`` naming the offending line."""
    lines = text.splitlines()
    result = Modelfile()
    i = 0
    while i < len(lines):
        number, stripped = i + 1, lines[i].strip()
        i += 1
        if not stripped or stripped.startswith("#"):
            continue
        command, rest = _split_word(stripped)
        command = command.lower()
        if command not in COMMANDS:
            raise _error(number, _COMMAND_ERROR)
        if command in ("parameter", "message"):
            key, rest = _split_word(rest)
            if not key:
                missing = "parameter name" if command == "parameter" else "role"
                raise _error(number, f"missing {missing} after {command.upper()}")
        value, quoted, i = _read_value(rest, lines, i, number)
        if value is None or (value == "" and command in ("from", "adapter", "draft", "parameter")):
            raise _error(number, f"missing value for {command.upper()}")
        _apply(result, command, key if command in ("parameter", "message") else "", value, quoted, number)
    if result.from_ is None:
        last = max(1, len(lines))
        raise _error(last, "no FROM line; a Modelfile must start from a model: FROM <model name or GGUF file>")
    return result


def _apply(result: Modelfile, command: str, key: str, value: str, quoted: bool, number: int) -> None:
    if command == "from" and result.from_ is not None:
        result.extra_from.append(value)
    elif command == "from":
        result.from_ = value
    elif command == "template":
        result.template = value
    elif command == "system":
        result.system = value
    elif command == "adapter":
        result.adapters.append(value)
    elif command == "draft":
        result.drafts.append(value)
    elif command == "license":
        result.license.append(value)
    elif command == "message":
        if key.lower() not in ROLES:
            raise _error(number, _ROLE_ERROR)
        result.messages.append({"role": key.lower(), "content": value})
    else:
        try:
            typed = parse_parameter(key.lower(), value)
        except InvalidOption as e:
            raise _error(number, str(e)) from None
        if quoted and is_list_option(key.lower()):
            typed = [value]  # a quoted stop string is exact: keep its spaces and inner quotes
        result.parameters = merge_parameters(result.parameters, {key.lower(): typed})


def _split_word(text: str) -> tuple[str, str]:
    match = _WORD.fullmatch(text.lstrip())
    if not match:
        return "", ""
    return match.group(1), match.group(2) or ""


def _read_value(first: str, lines: list[str], i: int, number: int) -> tuple[str | None, bool, int]:
    """The value that starts with ``first``: (value, whether it was quoted, next unread line index)."""
    if first.startswith('"""'):
        body = first[3:]
        parts = []
        while True:
            end = body.find('"""')
            if end >= 0:
                parts.append(body[:end])
                if body[end + 3:].strip():
                    raise _error(i, 'unexpected text after closing """')
                return "\n".join(parts), True, i
            parts.append(body)
            if i >= len(lines):
                raise _error(number, 'unterminated multi-line string: no closing """')
            body, i = lines[i], i + 1
    first = first.strip()
    if first.startswith('"'):
        # As Ollama's parser: a quoted value may go on over lines, up to a line that ends the quote
        # (``ollama show --modelfile`` writes multi-line values so when they hold no quote).
        text = first
        while len(text) < 2 or not text.endswith('"') or text.endswith('\\"'):
            if i >= len(lines):
                raise _error(number, "unterminated quoted string")
            text, i = text + "\n" + lines[i], i + 1
            if text.rstrip().endswith('"'):
                text = text.rstrip()
        return re.sub(r'\\(["\\])', r"\1", text[1:-1]), True, i
    return (first or None), False, i


def _error(number: int, message: str) -> ModelfileError:
    return ModelfileError(f"(line {number}): {message}")


# ---- rendering --------------------------------------------------------------------------------


def render_modelfile(record: ModelRecord) -> str:
    """The Modelfile ``/api/show`` returns: it recreates the model when given to ``create``."""
    out = [
        '# Modelfile generated by "llm show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {record.name.display()}",
        "",
        f"FROM {record.model_path}",
    ]
    out += [f"ADAPTER {path}" for path in record.adapters]
    if record.projector_path is not None:  # Ollama's place for it: a FROM after the adapters
        out.append(f"FROM {record.projector_path}")
    if record.chat_template is not None:
        out.append(f'TEMPLATE """{record.chat_template}"""')
    if record.system is not None:
        out.append(f'SYSTEM """{record.system}"""')
    for name, value in sorted(record.parameters.items()):
        for item in value if isinstance(value, list) else [value]:
            out.append(f"PARAMETER {name} {_quote(_format_value(item))}")
    out += [f'LICENSE """{text}"""' for text in record.license]
    for message in record.messages:  # Ollama's order: licenses, then messages
        out.append(f"MESSAGE {message['role']} {_quote(message['content'])}")
    return "\n".join(out) + "\n"


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _quote(text: str) -> str:
    """Quote a value only when the parser would otherwise change it."""
    if "\n" in text or text != text.strip() or text.startswith('"') or not text:
        return f'"""{text}"""'
    return text
