"""Wire types of Ollama's native API as llmhost accepts them.

Each request type validates a decoded JSON body (``from_json``) and raises ``BadRequest`` with a
message naming the field, so a handler never sees a value of the wrong type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmhost.api.options import validate_options
from llmhost.errors import BadRequest
from llmhost.units import parse_duration

_MISSING = object()
_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", list: "an array", dict: "an object"}


def field_of(body: dict, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    """``body[name]`` checked against ``kind``; absent or null gives ``default``."""
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        raise BadRequest(f'invalid value for "{name}": expected {expected}')
    return value


def model_field(body: dict) -> str:
    """The model name (``model``, or the legacy ``name``); required."""
    name = field_of(body, "model", str) or field_of(body, "name", str)
    if not name:
        raise BadRequest("model is required")
    return name


def keep_alive_field(body: dict) -> float | None:
    """Seconds the model should stay loaded after this request (inf = forever), or None for the default."""
    value = body.get("keep_alive")
    if value is None:
        return None
    return parse_duration(value)


def format_field(body: dict) -> str | dict | None:
    """``format``: "json" or a JSON-schema object; "" means none."""
    value = body.get("format")
    if value is None or value == "":
        return None
    if value == "json" or isinstance(value, dict):
        return value
    raise BadRequest(f'invalid format: {value!r}; expected "json" or a valid JSON Schema object')


def _think_field(body: dict) -> None:
    think = body.get("think")
    if think is None or think is False:
        return
    if think is True or think in ("low", "medium", "high", "max"):
        raise BadRequest(f'"{body.get("model")}" does not support thinking')
    raise BadRequest(f'invalid value for "think": {think!r}; expected a boolean or "low", "medium", "high"')


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    content: str

    @classmethod
    def from_json(cls, value: Any, index: int) -> "Message":
        if not isinstance(value, dict):
            raise BadRequest(f"invalid message at index {index}: expected an object")
        role = value.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest(f'invalid message at index {index}: "role" must be a non-empty string')
        content = value.get("content", "")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BadRequest(f'invalid message at index {index}: "content" must be a string')
        if value.get("images"):
            raise BadRequest("this model does not support images")
        return cls(role=role.lower(), content=content)

    def to_json(self) -> dict:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class InferenceCommon:
    """Fields shared by generate and chat."""

    model: str
    stream: bool = True
    format: str | dict | None = None
    keep_alive: float | None = None
    options: dict = field(default_factory=dict)
    truncate: bool = True
    priority: int = 0

    @staticmethod
    def common_fields(body: dict) -> dict:
        _think_field(body)
        return {
            "model": model_field(body),
            "stream": field_of(body, "stream", bool, True),
            "format": format_field(body),
            "keep_alive": keep_alive_field(body),
            "options": validate_options(body.get("options")),
            "truncate": field_of(body, "truncate", bool, True),
            "priority": field_of(body, "priority", int, 0),
        }


@dataclass(frozen=True)
class GenerateRequest(InferenceCommon):
    """POST /api/generate."""

    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    raw: bool = False

    @classmethod
    def from_json(cls, body: dict) -> "GenerateRequest":
        req = cls(
            **cls.common_fields(body),
            prompt=field_of(body, "prompt", str, ""),
            suffix=field_of(body, "suffix", str, ""),
            system=field_of(body, "system", str),
            template=field_of(body, "template", str),
            raw=field_of(body, "raw", bool, False),
        )
        if req.raw and (req.template or req.system or body.get("context")):
            raise BadRequest("raw mode does not support template, system, or context")
        if body.get("context"):  # deprecated token-id carry-over; silently ignoring it would lose the chat
            raise BadRequest('"context" is not supported: send the conversation with /api/chat '
                             "(llmhost reuses the KV cache of earlier turns automatically)")
        if body.get("images"):
            raise BadRequest("this model does not support images")
        if req.suffix:
            raise BadRequest(f'"{req.model}" does not support insert')
        return req


@dataclass(frozen=True)
class ChatRequest(InferenceCommon):
    """POST /api/chat."""

    messages: tuple[Message, ...] = ()

    @classmethod
    def from_json(cls, body: dict) -> "ChatRequest":
        raw_messages = field_of(body, "messages", list, [])
        if body.get("tools"):
            raise BadRequest(f'"{body.get("model")}" does not support tools')
        return cls(
            **cls.common_fields(body),
            messages=tuple(Message.from_json(m, i) for i, m in enumerate(raw_messages)),
        )


@dataclass(frozen=True)
class EmbedRequest:
    """POST /api/embed (and legacy /api/embeddings with ``prompt``)."""

    model: str
    inputs: tuple[str, ...]
    truncate: bool = True
    dimensions: int | None = None
    keep_alive: float | None = None
    options: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: dict, legacy: bool = False) -> "EmbedRequest":
        if legacy:
            inputs = [field_of(body, "prompt", str, "")]
        else:
            value = body.get("input")
            if value is None:
                value = []
            inputs = [value] if isinstance(value, str) else value
            if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
                raise BadRequest("invalid input type")
        dimensions = field_of(body, "dimensions", int)
        if dimensions is not None and dimensions < 1:
            raise BadRequest('invalid value for "dimensions": must be at least 1')
        return cls(
            model=model_field(body),
            inputs=tuple(inputs),
            truncate=field_of(body, "truncate", bool, True),
            dimensions=dimensions,
            keep_alive=keep_alive_field(body),
            options=validate_options(body.get("options")),
        )
