"""Go values as templates see them: Python data with Go's printing, truth and JSON rules.

    str, bool, int (Go int), float (float64)   as themselves
    None                                        a nil interface (a JSON null, a missing map key)
    NO_VALUE                                    Go's invalid value: what a pipeline yields for nil
    list / tuple                                slices; ``GoSlice`` for a named slice type
    dict                                        map[string]any (ranged and printed in key order)
    Struct                                      a Go struct (fields in order, JSON per its tags)

A value may have a ``String`` method (``Struct(..., string=True)``, ``GoSlice``/``GoMap`` with
``string=``): printing uses it, as Go's fmt does. ``go_json`` is Go's ``json.Marshal``: struct
fields in declaration order, map keys sorted, ``<``, ``>``, ``&`` escaped, floats formatted as Go
formats them (so a prompt is the same byte for byte).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any


class _NoValue:
    """Go's invalid reflect.Value: printed ``<no value>``, false, and field lookups on it yield it."""

    _instance: _NoValue | None = None

    def __new__(cls) -> _NoValue:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_VALUE"


NO_VALUE = _NoValue()


class Struct:
    """A Go struct value. ``json_fields``: (field, json key, omitempty) per encoded field, in order
    (None: every field under its own name, as for a struct without tags); ``string``: its String
    method returns its JSON."""

    __slots__ = ("fields", "has_string", "json_fields", "type_name")

    def __init__(self, type_name: str, fields: dict[str, Any],
                 json_fields: tuple[tuple[str, str, bool], ...] | None = None, string: bool = False):
        self.type_name = type_name
        self.fields = fields
        self.json_fields = json_fields
        self.has_string = string

    def go_string(self) -> str | None:
        return go_json(self) if self.has_string else None

    def json_items(self) -> list[tuple[str, Any]]:
        if self.json_fields is None:
            return list(self.fields.items())
        return [(key, self.fields[name]) for name, key, omitempty in self.json_fields
                if not (omitempty and _empty(self.fields[name]))]

    def __repr__(self) -> str:
        return f"Struct({self.type_name}, {self.fields!r})"


class GoSlice(list):
    """A slice of a named type: ``nil`` (JSON null, not []) and an optional String method."""

    def __init__(self, items=(), *, nil: bool = False, string: Callable[[GoSlice], str] | None = None,
                 json_value: Callable[[GoSlice], Any] | None = None):
        super().__init__(items)
        self.nil = nil and not self
        self.string = string
        self.json_value = json_value

    def go_string(self) -> str | None:
        return self.string(self) if self.string else None


class GoMap(dict):
    """A map of a named type: ``ordered`` keeps insertion order in JSON (an ordered map), ``nil``
    encodes null, and an optional String method."""

    def __init__(self, items=(), *, ordered: bool = False, nil: bool = False,
                 string: Callable[[GoMap], str] | None = None):
        super().__init__(items)
        self.ordered = ordered
        self.nil = nil and not self
        self.string = string

    def go_string(self) -> str | None:
        return self.string(self) if self.string else None


def _empty(value: Any) -> bool:
    """Go's omitempty: false, 0, "", nil, and empty slices and maps."""
    if value is None or value is NO_VALUE:
        return True
    if isinstance(value, (bool, int, float)):
        return not value
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) == 0
    return False


def stringer(value: Any) -> str | None:
    """``value.String()`` when the value has that method."""
    method = getattr(value, "go_string", None)
    return method() if method is not None else None


def is_true(value: Any) -> bool:
    """Go template truth: false, 0, nil, and empty strings, slices and maps are false; structs true."""
    if value is None or value is NO_VALUE:
        return False
    if isinstance(value, (bool, int, float, str, list, tuple, dict)):
        return bool(value)
    return True


def type_name(value: Any) -> str:
    """Go's name for a value's type, for error messages."""
    if value is None or value is NO_VALUE:
        return "nil"
    if isinstance(value, Struct):
        return value.type_name
    return {bool: "bool", int: "int", float: "float64", str: "string"}.get(type(value)) or (
        "map[string]interface {}" if isinstance(value, dict) else "[]interface {}"
        if isinstance(value, (list, tuple)) else type(value).__name__)


# ---- printing (fmt's %v) ------------------------------------------------------------------------


def format_value(value: Any, nil: str = "<nil>") -> str:
    """``fmt.Sprint(value)``: Go's ``%v``; ``nil`` is what a nil prints as at the top level."""
    if value is None or value is NO_VALUE:
        return nil
    text = stringer(value)
    if text is not None:
        return text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value, "g")
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "map[" + " ".join(f"{format_value(k)}:{format_value(v)}" for k, v in _sorted_items(value)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(format_value(item) for item in value) + "]"
    if isinstance(value, Struct):
        return "{" + " ".join(format_value(v) for v in value.fields.values()) + "}"
    return str(value)


def _sorted_items(mapping: dict) -> list[tuple[Any, Any]]:
    return sorted(mapping.items(), key=lambda kv: (str(type(kv[0])), kv[0]))


def _digits(f: float) -> tuple[str, int]:
    """The shortest decimal digits that round-trip ``f`` (> 0), and the decimal point's place:
    ``f == 0.DIGITS × 10**point``."""
    _, digits, exponent = Decimal(repr(f)).normalize().as_tuple()
    text = "".join(map(str, digits))
    return text, len(text) + int(exponent)


def format_float(f: float, verb: str = "g") -> str:
    """Go's shortest float formatting: ``g`` as ``%v`` (``strconv`` 'g', -1), ``json`` as
    encoding/json (fixed notation unless < 1e-6 or ≥ 1e21, exponent without a leading zero)."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1, f) < 0 else "0"
    sign = "-" if f < 0 else ""
    digits, point = _digits(abs(f))
    exp = point - 1
    if verb == "json":
        use_e = abs(f) < 1e-6 or abs(f) >= 1e21
    else:  # strconv's shortest 'g' decides on an exponent of -4 and precision 6
        use_e = exp < -4 or exp >= 6
    if use_e:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        width = 1 if verb == "json" and exp < 0 else 2  # encoding/json writes 1e-7, fmt 1e-07
        return f"{sign}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):0{width}d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


# ---- encoding/json --------------------------------------------------------------------------------


class UnsupportedValue(ValueError):
    """A value encoding/json refuses (NaN, ±Inf)."""


def go_json(value: Any) -> str:
    """``json.Marshal(value)`` as Go writes it (compact, HTML-safe, keys as Go orders them)."""
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts)


def _encode(value: Any, out: list[str]) -> None:
    if value is None or value is NO_VALUE:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise UnsupportedValue(f"json: unsupported value: {format_float(value)}")
        out.append(format_float(value, "json"))
    elif isinstance(value, str):
        out.append(json_string(value))
    elif isinstance(value, Struct):
        _encode_object(value.json_items(), out)
    elif isinstance(value, GoSlice) and value.json_value is not None:
        _encode(value.json_value(value), out)
    elif isinstance(value, (GoSlice, GoMap)) and value.nil:
        out.append("null")
    elif isinstance(value, dict):
        ordered = isinstance(value, GoMap) and value.ordered
        _encode_object(list(value.items()) if ordered else sorted(value.items(), key=lambda kv: str(kv[0])), out)
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise UnsupportedValue(f"json: unsupported type: {type_name(value)}")


def _encode_object(items: list[tuple[Any, Any]], out: list[str]) -> None:
    out.append("{")
    for i, (key, item) in enumerate(items):
        if i:
            out.append(",")
        out.append(json_string(str(key)))
        out.append(":")
        _encode(item, out)
    out.append("}")


_SURROGATE = re.compile("[\ud800-\udfff]")
_HTML_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def json_string(text: str) -> str:
    """A JSON string as encoding/json writes it (escapes ``<>&`` and U+2028/9; lone surrogates → U+FFFD)."""
    text = _SURROGATE.sub("\ufffd", text)
    return json.dumps(text, ensure_ascii=False).translate(_HTML_SAFE)
