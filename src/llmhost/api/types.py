"""Wire types of Ollama's native API as llmhost accepts them.

Each request type validates a decoded JSON body (``from_json``) and raises ``BadRequest`` with a
message naming the field, so a handler never sees a value of the wrong type.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from llmhost.api.options import validate_options
from llmhost.api.tools import ToolCall, ToolChoice, think_field, tools_field
from llmhost.errors import BadRequest
from llmhost.units import parse_duration

JsonObject = dict[str, Any]
"""A decoded JSON object (a request or response body, or a part of one)."""

_MISSING = object()
_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", list: "an array", dict: "an object"}


def field_of(body: JsonObject, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
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


def model_field(body: JsonObject) -> str:
    """The model name (``model``, or the legacy ``name``); required."""
    name: str | None = field_of(body, "model", str) or field_of(body, "name", str)
    if not name:
        raise BadRequest("model is required")
    return name


def keep_alive_field(body: JsonObject) -> float | None:
    """Seconds the model should stay loaded after this request (inf = forever), or None for the default."""
    value = body.get("keep_alive")
    if value is None:
        return None
    return parse_duration(value)


def format_field(body: JsonObject) -> str | JsonObject | None:
    """``format``: "json" or a JSON-schema object; "" means none."""
    value = body.get("format")
    if value is None or value == "":
        return None
    if value == "json":
        return "json"
    if isinstance(value, dict):
        return value
    raise BadRequest(f'invalid format: {value!r}; expected "json" or a valid JSON Schema object')


MAX_TOP_LOGPROBS = 20
MAX_CONTEXT_TOKENS = 1 << 20  # ``context`` ids a generate request may carry back (bounds the body's work)


def logprobs_fields(body: JsonObject) -> int | None:
    """``logprobs``/``top_logprobs`` → None (off) or how many alternatives to return (0..20)."""
    top: int = field_of(body, "top_logprobs", int, 0)
    if top < 0 or top > MAX_TOP_LOGPROBS:
        raise BadRequest(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
    if not field_of(body, "logprobs", bool, False):
        return None
    return top


def context_field(body: JsonObject) -> tuple[int, ...]:
    """``context`` of /api/generate: the token ids a previous answer returned."""
    value = field_of(body, "context", list, [])
    if len(value) > MAX_CONTEXT_TOKENS or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                  for t in value):
        raise BadRequest('invalid value for "context": expected an array of token ids')
    return tuple(value)


MAX_IMAGES = 16  # per request, all messages together
MAX_IMAGE_BYTES = 20 << 20  # one image, decoded: the runner's own limit, refused here before a model loads
MAX_IMAGES_BYTES = 64 << 20  # all of a request's images, decoded


def images_field(value: Any, where: str) -> tuple[str, ...]:
    """``images``: base64 strings, Ollama's wire form of its ``[]ImageData``; each must decode (as Go's
    decoder, line breaks are ignored) and be at most MAX_IMAGE_BYTES. ``where`` starts the 400's text.

    The strings are kept as sent (line breaks dropped) for the runner, which checks what they hold.
    """
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRequest(f'{where}: "images" must be an array of base64-encoded images')
    check_image_count(len(value))
    images = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise BadRequest(f'{where}: images[{index}] must be a string (the image\'s bytes, base64-encoded)')
        text = item.replace("\r", "").replace("\n", "")
        try:
            size = len(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            hint = ' without its "data:…;base64," prefix' if text.startswith("data:") else ""
            raise BadRequest(f"{where}: images[{index}] is not valid base64; send the image's bytes "
                             f"base64-encoded{hint}") from None
        if size == 0:
            raise BadRequest(f"{where}: images[{index}] is empty")
        if size > MAX_IMAGE_BYTES:
            raise BadRequest(f"{where}: images[{index}] is {_mib(size)} decoded, more than the limit of "
                             f"{_mib(MAX_IMAGE_BYTES)} per image")
        images.append(text)
    return tuple(images)


def check_image_budget(images: Iterable[str]) -> None:
    """A request's images together: at most MAX_IMAGES, and MAX_IMAGES_BYTES decoded."""
    images = list(images)
    check_image_count(len(images))
    total = sum(len(image) // 4 * 3 - image[-2:].count("=") for image in images)  # exact for valid base64
    if total > MAX_IMAGES_BYTES:
        raise BadRequest(f"images too large: {_mib(total)} decoded in this request (at most "
                         f"{_mib(MAX_IMAGES_BYTES)})")


def check_image_count(count: int) -> None:
    if count > MAX_IMAGES:
        raise BadRequest(f"too many images: {count} in this request (at most {MAX_IMAGES})")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n % (1 << 20) == 0 else f"{n / (1 << 20):.1f} MiB"


MESSAGE_TEXT_FIELDS = ("content", "thinking", "tool_name", "tool_call_id")


def message_fields(value: Any, index: int) -> dict[str, str]:
    """The role and text fields of chat message ``index`` (absent or null text: ""), checked.

    The one message check: requests (``Message.from_json``) and the runner's ``/completion`` body
    (``validate_messages``) both go through it, so both refuse a message with the same words.
    """
    if not isinstance(value, dict):
        raise BadRequest(f"invalid message at index {index}: expected an object")
    role = value.get("role")
    if not isinstance(role, str) or not role:
        raise BadRequest(f'invalid message at index {index}: "role" must be a non-empty string')
    fields = {"role": role}
    for name in MESSAGE_TEXT_FIELDS:
        item = value.get(name)
        if item is not None and not isinstance(item, str):
            raise BadRequest(f'invalid message at index {index}: "{name}" must be a string')
        fields[name] = item or ""
    return fields


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """A list of message dicts as chat templates take them (any further keys kept as they are), each
    checked by ``message_fields``; a null ``content`` becomes ""."""
    if not isinstance(messages, list):
        raise BadRequest('invalid value for "messages": expected an array')
    checked = [message_fields(m, i) for i, m in enumerate(messages)]
    return [{**m, "content": fields["content"]} for m, fields in zip(messages, checked)]


@dataclass(frozen=True)
class Message:
    """One chat message, with what agents and reasoning models put in a history."""

    role: str
    content: str
    thinking: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_name: str = ""
    tool_call_id: str = ""
    images: tuple[str, ...] = ()  # base64, as sent (see ``images_field``)

    @classmethod
    def from_json(cls, value: Any, index: int) -> Message:
        fields = message_fields(value, index)
        images = images_field(value.get("images"), f"invalid message at index {index}")
        calls = value.get("tool_calls") or []
        if not isinstance(calls, list):
            raise BadRequest(f'invalid message at index {index}: "tool_calls" must be an array')
        tool_calls = tuple(ToolCall.from_json(c, f"messages[{index}].tool_calls[{j}]") for j, c in enumerate(calls))
        return cls(role=fields.pop("role").lower(), tool_calls=tool_calls, images=images, **fields)

    def to_json(self) -> JsonObject:
        """Ollama's native shape (empty optional fields left out, as Go's omitempty does)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.thinking:
            out["thinking"] = self.thinking
        if self.tool_calls:
            out["tool_calls"] = [c.to_json() for c in self.tool_calls]
        if self.tool_name:
            out["tool_name"] = self.tool_name
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.images:
            out["images"] = list(self.images)
        return out

    def for_template(self) -> JsonObject:
        """What chat templates read: HF's conventions, with Ollama's names alongside."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.thinking:
            out["thinking"] = out["reasoning_content"] = self.thinking
        if self.tool_calls:
            out["tool_calls"] = [c.for_template() for c in self.tool_calls]
        if self.tool_name:
            out["tool_name"] = out["name"] = self.tool_name
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.images:  # the runner replaces them with its image markers (docs/runner-protocol.md)
            out["images"] = list(self.images)
        return out


@dataclass(frozen=True)
class InferenceCommon:
    """Fields shared by generate and chat."""

    model: str
    stream: bool = True
    format: str | JsonObject | None = None
    keep_alive: float | None = None
    options: JsonObject = field(default_factory=dict)
    truncate: bool = True
    priority: int = 0
    think: bool | str | None = None  # None: the model's default (on for thinking models)
    logprobs: int | None = None  # None: off; else how many top alternatives per token (0..20)
    logit_bias: dict[str, float] = field(default_factory=dict)  # token id (as text) → bias; /v1 only

    @staticmethod
    def common_fields(body: JsonObject) -> JsonObject:
        return {
            "model": model_field(body),
            "stream": field_of(body, "stream", bool, True),
            "format": format_field(body),
            "keep_alive": keep_alive_field(body),
            "options": validate_options(body.get("options")),
            "truncate": field_of(body, "truncate", bool, True),
            "priority": field_of(body, "priority", int, 0),
            "think": think_field(body.get("think")),
            "logprobs": logprobs_fields(body),
            "logit_bias": logit_bias_field(body),
        }

    def needs(self) -> list[str]:
        """Capabilities beyond completion and thinking the model must have (Ollama's names)."""
        return []


def logit_bias_field(body: JsonObject) -> dict[str, float]:
    """OpenAI's ``logit_bias``: token id → bias in [-100, 100]."""
    value = field_of(body, "logit_bias", dict, {})
    if len(value) > 4096:
        raise BadRequest('too many entries in "logit_bias" (at most 4096)')
    for key, bias in value.items():
        if not str(key).isdigit():
            raise BadRequest(f'invalid token id {key!r} in "logit_bias": expected a token id')
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise BadRequest(f'invalid bias for token {key} in "logit_bias": expected a number from -100 to 100')
    return {str(k): float(v) for k, v in value.items()}


@dataclass(frozen=True)
class GenerateRequest(InferenceCommon):
    """POST /api/generate."""

    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    raw: bool = False
    context: tuple[int, ...] = ()
    images: tuple[str, ...] = ()  # base64, as sent (see ``images_field``)

    @classmethod
    def from_json(cls, body: JsonObject) -> GenerateRequest:
        req = cls(
            **cls.common_fields(body),
            prompt=field_of(body, "prompt", str, ""),
            suffix=field_of(body, "suffix", str, ""),
            system=field_of(body, "system", str),
            template=field_of(body, "template", str),
            raw=field_of(body, "raw", bool, False),
            context=context_field(body),
            images=images_field(body.get("images"), 'invalid value for "images"'),
        )
        if req.raw and (req.template or req.system or req.context):
            raise BadRequest("raw mode does not support template, system, or context")
        check_image_budget(req.images)
        return req

    def needs(self) -> list[str]:
        return (["insert"] if self.suffix else []) + (["vision"] if self.images else [])


@dataclass(frozen=True)
class ChatRequest(InferenceCommon):
    """POST /api/chat."""

    messages: tuple[Message, ...] = ()
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True

    @classmethod
    def from_json(cls, body: JsonObject) -> ChatRequest:
        common = cls.common_fields(body)
        raw_messages = field_of(body, "messages", list, [])
        tools = tools_field(body.get("tools"))
        messages = tuple(Message.from_json(m, i) for i, m in enumerate(raw_messages))
        check_image_budget(image for m in messages for image in m.images)
        return cls(
            **common,
            messages=messages,
            tools=tools,
            tool_choice=ToolChoice.from_json(body.get("tool_choice"), tools),
            parallel_tool_calls=field_of(body, "parallel_tool_calls", bool, True),
        )

    @property
    def offered_tools(self) -> tuple[dict[str, Any], ...]:
        """The tools the template sees: none at all with ``tool_choice: "none"``."""
        return () if self.tool_choice.mode == "none" else self.tools

    def needs(self) -> list[str]:
        images = any(m.images for m in self.messages)
        return (["tools"] if self.tools else []) + (["vision"] if images else [])


@dataclass(frozen=True)
class EmbedRequest:
    """POST /api/embed (and legacy /api/embeddings with ``prompt``)."""

    model: str
    inputs: tuple[str, ...]
    truncate: bool = True
    dimensions: int | None = None
    keep_alive: float | None = None
    options: JsonObject = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: JsonObject, legacy: bool = False) -> EmbedRequest:
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


@dataclass(frozen=True)
class TokenizeRequest:
    """POST /api/tokenize (llmhost extension): text → the model's token ids (no BOS/EOS added,
    control tokens in the text parsed), through the model's runner."""

    model: str
    content: str
    pieces: bool = False  # also each token's text (its bytes where it is not whole UTF-8)
    keep_alive: float | None = None
    options: JsonObject = field(default_factory=dict)  # load options (num_ctx…) pick the runner, as for generate

    @classmethod
    def from_json(cls, body: JsonObject) -> TokenizeRequest:
        content = field_of(body, "content", str)
        if content is None:
            raise BadRequest('"content" is required: the text to tokenize')
        return cls(model=model_field(body), content=content, pieces=field_of(body, "pieces", bool, False),
                   keep_alive=keep_alive_field(body), options=validate_options(body.get("options")))


@dataclass(frozen=True)
class DetokenizeRequest:
    """POST /api/detokenize (llmhost extension): token ids → text, control tokens as their text."""

    model: str
    tokens: tuple[int, ...]
    keep_alive: float | None = None
    options: JsonObject = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: JsonObject) -> DetokenizeRequest:
        tokens = field_of(body, "tokens", list)
        if tokens is None or len(tokens) > MAX_CONTEXT_TOKENS or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tokens):
            raise BadRequest('invalid value for "tokens": expected an array of token ids')
        return cls(model=model_field(body), tokens=tuple(tokens), keep_alive=keep_alive_field(body),
                   options=validate_options(body.get("options")))


MAX_RERANK_DOCUMENTS = 10_000  # each is a sequence the runner evaluates and a result the daemon sends back


@dataclass(frozen=True)
class RerankRequest:
    """POST /api/rerank and /v1/rerank (llmhost extension, in llama-server's, Jina's and Cohere's
    shape): the documents scored against the query by a reranker model, best first."""

    model: str
    query: str
    documents: tuple[str, ...]
    top_n: int | None = None  # how many of the best to return; None: all
    return_documents: bool = False  # each result carries its document as ``{"text": ...}``
    truncate: bool = True  # a document too long for the context loses its end; false: a 400 instead
    keep_alive: float | None = None
    options: JsonObject = field(default_factory=dict)  # load options (num_ctx…) pick the runner, as for embed

    @classmethod
    def from_json(cls, body: JsonObject) -> RerankRequest:
        model = model_field(body)
        query = field_of(body, "query", str)
        if query is None:
            raise BadRequest('"query" is required: the text to rank the documents against')
        documents = field_of(body, "documents", list, [])
        if not documents or not all(isinstance(d, str) for d in documents):
            raise BadRequest('"documents" must be a non-empty array of strings')
        if len(documents) > MAX_RERANK_DOCUMENTS:
            raise BadRequest(f'too many "documents": {len(documents)} (at most {MAX_RERANK_DOCUMENTS} per request)')
        top_n = field_of(body, "top_n", int)
        if top_n is not None and top_n < 1:
            raise BadRequest('invalid value for "top_n": must be at least 1')
        return cls(model=model, query=query, documents=tuple(documents), top_n=top_n,
                   return_documents=field_of(body, "return_documents", bool, False),
                   truncate=field_of(body, "truncate", bool, True), keep_alive=keep_alive_field(body),
                   options=validate_options(body.get("options")))
