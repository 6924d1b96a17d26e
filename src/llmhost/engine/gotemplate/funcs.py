"""The functions a template may call: Go's predefined ones and Ollama's FuncMap.

Go: ``and or not len index slice print printf println html js urlquery eq ne lt le gt ge call``
(``and``/``or`` are evaluated lazily by the executor; ``call`` is refused: templates here are given
no function values). Ollama: ``json`` (encoding/json, "" when it fails), ``currentDate`` and
``yesterdayDate`` (YYYY-MM-DD, arguments ignored), ``toTypeScriptType`` (a tool property's type in
TypeScript, else ``any``).

Each function takes the evaluated arguments and returns a value, or raises ``FuncError`` (the
executor reports ``error calling NAME: …``, as Go does).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote_plus

from llmhost.engine.gotemplate.values import (
    NO_VALUE,
    GoSlice,
    Struct,
    UnsupportedValue,
    format_value,
    go_json,
    is_true,
    stringer,
    type_name,
)


class FuncError(Exception):
    """A function refused its arguments; the message is Go's."""


@dataclass(frozen=True)
class Builtin:
    fn: Callable[..., Any]
    min_args: int
    max_args: int | None  # None: variadic
    strings: bool = False  # every argument must be a string (Go's ``...string``)
    builds_text: bool = False  # turns its arguments into text (measured against the budget first)


# ---- comparison -------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None or value is NO_VALUE:
        return "invalid"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def _eq(arg1: Any, *others: Any) -> bool:
    if not others:
        raise FuncError("missing argument for comparison")
    k1 = _kind(arg1)
    for arg in others:
        k2 = _kind(arg)
        if k1 != k2:
            if k1 != "invalid" and k2 != "invalid":
                raise FuncError("incompatible types for comparison")
            continue
        if k1 == "other":
            raise FuncError(f"non-comparable types {type_name(arg1)}, {type_name(arg)}")
        if k1 == "invalid" or arg1 == arg:
            return True
    return False


def _ordered(arg1: Any, arg2: Any) -> tuple[Any, Any]:
    k1, k2 = _kind(arg1), _kind(arg2)
    if k1 not in ("int", "float", "string") or k2 not in ("int", "float", "string"):
        raise FuncError("invalid type for comparison")
    if k1 != k2:
        raise FuncError("incompatible types for comparison")
    return arg1, arg2


def _lt(a: Any, b: Any) -> bool:
    a, b = _ordered(a, b)
    return a < b


def _le(a: Any, b: Any) -> bool:
    a, b = _ordered(a, b)
    return a <= b


# ---- collections ------------------------------------------------------------------------------


def _length(item: Any) -> int:
    if item is None or item is NO_VALUE:
        raise FuncError("len of nil pointer")
    if isinstance(item, str):
        return len(item.encode("utf-8", "surrogatepass"))
    if isinstance(item, (list, tuple, dict)):
        return len(item)
    raise FuncError(f"len of type {type_name(item)}")


def _index_arg(index: Any, cap: int) -> int:
    if index is None or index is NO_VALUE:
        raise FuncError("cannot index slice/array with nil")
    if isinstance(index, bool) or not isinstance(index, int):
        raise FuncError(f"cannot index slice/array with type {type_name(index)}")
    if index < 0 or index > cap:
        raise FuncError(f"index out of range: {index}")
    return index


def _index(item: Any, *indexes: Any) -> Any:
    if item is None or item is NO_VALUE:
        raise FuncError("index of untyped nil")
    for index in indexes:
        if item is None:
            raise FuncError("index of nil pointer")
        if isinstance(item, (list, tuple, str)):
            data = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else item
            x = _index_arg(index, len(data))
            if x == len(data):
                raise FuncError(f"index out of range: {x}")
            item = data[x]
        elif isinstance(item, dict):
            if not isinstance(index, str):
                raise FuncError(f"value has type {type_name(index)}; should be string")
            item = item.get(index)
        else:
            raise FuncError(f"can't index item of type {type_name(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if item is None or item is NO_VALUE:
        raise FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise FuncError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise FuncError("cannot 3-index slice a string")
        data: Any = item.encode("utf-8", "surrogatepass")
    elif isinstance(item, (list, tuple)):
        data = item
    else:
        raise FuncError(f"can't slice item of type {type_name(item)}")
    bounds = [0, len(data)]
    for i, index in enumerate(indexes[:2]):
        bounds[i] = _index_arg(index, len(data))
    if len(indexes) == 3:
        _index_arg(indexes[2], len(data))
    if bounds[0] > bounds[1]:
        raise FuncError(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    if len(indexes) == 3 and bounds[1] > indexes[2]:
        raise FuncError(f"invalid slice index: {bounds[1]} > {indexes[2]}")
    part = data[bounds[0]:bounds[1]]
    if isinstance(item, str):
        return part.decode("utf-8", "replace")
    return GoSlice(part, string=item.string) if isinstance(item, GoSlice) else list(part)


# ---- printing ---------------------------------------------------------------------------------


def sprint(*args: Any) -> str:
    """fmt.Sprint: a space between operands when neither is a string."""
    out: list[str] = []
    previous_string = True
    for i, arg in enumerate(args):
        is_string = isinstance(arg, str)
        if i and not is_string and not previous_string:
            out.append(" ")
        out.append(format_value(arg))
        previous_string = is_string
    return "".join(out)


def _sprintln(*args: Any) -> str:
    return " ".join(format_value(arg) for arg in args) + "\n"


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d*))?([a-zA-Z%])")
_GO_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v",
               '"': r"\"", "\\": r"\\"}


def go_quote(text: str) -> str:
    """strconv.Quote."""
    out = []
    for ch in text:
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return '"' + "".join(out) + '"'


def sprintf(fmt: str, args: list[Any], allow: Callable[[int], None]) -> str:
    """fmt.Sprintf for the verbs templates use (v s q d t f e g x X o b c U), with Go's
    ``%!verb(type=value)``, ``%!verb(MISSING)`` and ``%!(EXTRA …)`` for mismatches. ``allow`` is
    told each width and precision before it is used (a width can build much text)."""
    out: list[str] = []
    pos = used = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width, precision, verb = m.groups()
        if verb == "%":
            out.append("%")
            continue
        for number in (width, precision):
            if number:
                allow(int(number))
        if used >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        text = _format_verb(verb, flags, precision, args[used])
        used += 1
        if width and len(text) < int(width):
            fill = "0" if "0" in flags and "-" not in flags and verb in "dfeEgGxXob" else " "
            pad = int(width) - len(text)
            if "-" in flags:
                text += " " * pad
            elif fill == "0" and text[:1] in "+-":
                text = text[0] + "0" * pad + text[1:]
            else:
                text = fill * pad + text
        out.append(text)
    out.append(fmt[pos:])
    if used < len(args):
        extra = ", ".join(f"{type_name(a)}={format_value(a)}" for a in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _format_verb(verb: str, flags: str, precision: str | None, arg: Any) -> str:
    bad = f"%!{verb}({type_name(arg)}={format_value(arg)})" if arg is not None else f"%!{verb}(<nil>)"
    numeric = isinstance(arg, (int, float)) and not isinstance(arg, bool)
    if verb == "v":
        return format_value(arg)
    if verb == "s":
        if numeric or isinstance(arg, bool) or arg is None:
            return bad
        text = stringer(arg) if not isinstance(arg, str) else arg
        text = format_value(arg) if text is None else text
        return text[: int(precision)] if precision else text
    if verb == "q":
        if isinstance(arg, str):
            return go_quote(arg)
        if isinstance(arg, int) and not isinstance(arg, bool) and 0 <= arg <= 0x10FFFF:
            return go_quote(chr(arg)).replace('"', "'")
        return bad
    if verb == "t":
        return format_value(arg) if isinstance(arg, bool) else bad
    if isinstance(arg, int) and not isinstance(arg, bool) and verb in "dxXobcU":
        if verb == "c":
            return chr(arg) if 0 <= arg <= 0x10FFFF else "\ufffd"
        if verb == "U":
            return f"U+{arg:04X}"
        prefix = {"x": "0x", "X": "0X", "o": "0"}.get(verb, "") if "#" in flags else ""
        sign = "-" if arg < 0 else "+" if "+" in flags else ""
        return sign + prefix + format(abs(arg), verb)
    if isinstance(arg, str) and verb in "xX":
        hexed = arg.encode("utf-8", "surrogatepass").hex()
        return hexed.upper() if verb == "X" else hexed
    if isinstance(arg, float) and verb in "eEfFgG":
        sign = "+" if "+" in flags and arg >= 0 else ""
        if verb in "gG" and precision is None:
            return sign + format_value(arg)
        digits = 6 if precision is None else int(precision or 0)
        return sign + format(arg, f".{digits}{verb}")
    return bad


def _escape_args(args: tuple[Any, ...]) -> str:
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return sprint(*args)


_HTML = str.maketrans({'"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;", ">": "&gt;", "\x00": "\ufffd"})


def _html(*args: Any) -> str:
    return _escape_args(args).translate(_HTML)


_JS_SPECIAL = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E", "&": "\\u0026", "=": "\\u003D"}


def _js(*args: Any) -> str:
    out = []
    for ch in _escape_args(args):
        if ch in _JS_SPECIAL:
            out.append(_JS_SPECIAL[ch])
        elif ord(ch) < 0x20 or (ord(ch) >= 0x80 and not ch.isprintable()):
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _urlquery(*args: Any) -> str:
    return quote_plus(_escape_args(args), safe="")


def _call(*args: Any) -> Any:
    raise FuncError("call is not supported: templates are given no function values")


# ---- Ollama's FuncMap ---------------------------------------------------------------------------


def _json(value: Any) -> str:
    try:
        return go_json(value)
    except (UnsupportedValue, RecursionError):
        return ""  # Ollama's json ignores Marshal's error


def _current_date(*_: str) -> str:
    return date.today().isoformat()


def _yesterday_date(*_: str) -> str:
    return (date.today() - timedelta(days=1)).isoformat()


_TS_TYPES = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
             "array": "any[]", "object": "Record<string, any>", "null": "null"}


def typescript_type(prop: Any) -> str:
    """api.ToolProperty.ToTypeScriptType: anyOf members or the types, joined with `` | ``."""
    if not isinstance(prop, Struct) or prop.type_name != "api.ToolProperty":
        return "any"
    any_of = prop.fields.get("AnyOf") or []
    if any_of:
        return " | ".join(typescript_type(member) for member in any_of)
    types = list(prop.fields.get("Type") or [])
    if not types:
        return "any"
    return " | ".join(_TS_TYPES.get(t, "any") for t in types)


BUILTINS: dict[str, Builtin] = {
    "not": Builtin(lambda x: not is_true(x), 1, 1),
    "len": Builtin(_length, 1, 1),
    "index": Builtin(_index, 1, None),
    "slice": Builtin(_slice, 1, None),
    "eq": Builtin(_eq, 1, None),
    "ne": Builtin(lambda a, b: not _eq(a, b), 2, 2),
    "lt": Builtin(_lt, 2, 2),
    "le": Builtin(_le, 2, 2),
    "gt": Builtin(lambda a, b: not _le(a, b), 2, 2),
    "ge": Builtin(lambda a, b: not _lt(a, b), 2, 2),
    "print": Builtin(sprint, 0, None, builds_text=True),
    "println": Builtin(_sprintln, 0, None, builds_text=True),
    "html": Builtin(_html, 0, None, builds_text=True),
    "js": Builtin(_js, 0, None, builds_text=True),
    "urlquery": Builtin(_urlquery, 0, None, builds_text=True),
    "call": Builtin(_call, 1, None),
    "json": Builtin(_json, 1, 1, builds_text=True),
    "currentDate": Builtin(_current_date, 0, None, strings=True),
    "yesterdayDate": Builtin(_yesterday_date, 0, None, strings=True),
    "toTypeScriptType": Builtin(typescript_type, 1, 1),
}
# printf needs the budget (widths), and/or are lazy: the executor implements them.
FUNCTION_NAMES = frozenset(BUILTINS) | {"and", "or", "printf"}
