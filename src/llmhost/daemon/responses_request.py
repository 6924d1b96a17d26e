"""A Responses request body (``POST /v1/responses``) → a native chat request, as one ``Turn``.

``input`` items become native messages (a reasoning item joins the assistant message after it, calls
that follow an assistant message join it), flat function tools the native ones, ``text.format`` a
``format``; ``instructions``, ``tools`` and sampling fields apply to this turn only, and the model
defaults to the previous response's. The Turn also holds what to store and what the response echoes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmhost.api.tools import arguments_object
from llmhost.api.types import ChatRequest, JsonObject
from llmhost.daemon.image_inputs import image_from_url
from llmhost.daemon.openai_request import think_from_effort, tool_name_of_call
from llmhost.daemon.responses_store import StoredResponse
from llmhost.errors import BadRequest

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


@dataclass(frozen=True)
class Turn:
    """One Responses request made native: the chat request, what to store, what the response repeats."""

    request: ChatRequest
    conversation: tuple[JsonObject, ...]  # native messages before the answer, without this turn's instructions
    echo: JsonObject  # request fields the response object repeats
    store: bool


def make_turn(body: JsonObject, previous: StoredResponse | None) -> Turn:
    """Validate a ``POST /v1/responses`` body into a Turn; ``previous`` is the response it continues."""
    _refuse_unsupported(body)
    history = list(previous.messages) if previous else []
    instructions = _instructions(body)
    system = [{"role": "system", "content": instructions}] if instructions else []
    request = ChatRequest.from_json({
        "model": body.get("model") or (previous.model if previous else None),
        "messages": system + history + _input_messages(body.get("input"), history),
        "options": _options(body), "format": _format(body.get("text")),
        "stream": False if body.get("stream") is None else body["stream"],
        "tools": _tools(body.get("tools")), "tool_choice": _tool_choice(body.get("tool_choice")),
        "parallel_tool_calls": body.get("parallel_tool_calls"), "think": think_from_effort(body),
    })
    conversation = tuple(m.to_json() for m in request.messages[len(system):])
    store = True if body.get("store") is None else body["store"]
    if not isinstance(store, bool):
        raise BadRequest('invalid value for "store": expected a boolean')
    return Turn(request, conversation, {**_echo(body, instructions), "store": store}, store)


def _refuse_unsupported(body: JsonObject) -> None:
    if body.get("background"):
        raise BadRequest("background responses are not supported; stream the response instead")
    if body.get("conversation") is not None:
        raise BadRequest('"conversation" objects are not supported; continue a conversation with '
                         '"previous_response_id"')


def _instructions(body: JsonObject) -> str:
    value = body.get("instructions")
    if value is not None and not isinstance(value, str):
        raise BadRequest('invalid value for "instructions": expected a string')
    return value or ""


def _input_messages(value: Any, history: list[JsonObject]) -> list[JsonObject]:
    """``input`` → native messages; ``history`` names the calls a ``function_call_output`` answers."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise BadRequest('"input" must be a string or a non-empty array of input items')
    messages: list[JsonObject] = []
    thinking = ""  # a reasoning item belongs to the assistant message that follows it
    for i, item in enumerate(value):
        if isinstance(item, dict) and item.get("type") == "reasoning":
            thinking += _reasoning_text(item, i)
            continue
        message = _input_item(item, i, history + messages)
        if message["role"] == "assistant" and thinking:
            message["thinking"], thinking = thinking, ""
        _append(messages, message)
    if thinking:
        messages.append({"role": "assistant", "content": "", "thinking": thinking})
    return messages


def _input_item(item: Any, index: int, context: list[JsonObject]) -> JsonObject:
    if not isinstance(item, dict):
        raise BadRequest(f"invalid input item at index {index}: expected an object")
    kind = item.get("type") or ("message" if "role" in item else "")
    if kind == "message":
        role = _ROLES.get(str(item.get("role")))
        if role is None:
            raise BadRequest(f'invalid input item at index {index}: role must be "user", "assistant", '
                             f'"system" or "developer", not {item.get("role")!r}')
        where = f"input[{index}].content"
        message: JsonObject = {"role": role, "content": _text(item.get("content"), where)}
        images = _images(item.get("content"))
        if images:
            message["images"] = images
        return message
    if kind == "function_call":
        return {"role": "assistant", "content": "", "tool_calls": [_call(item, index)]}
    if kind == "function_call_output":
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            raise BadRequest(f'invalid function_call_output at input[{index}]: "call_id" must be a string')
        return {"role": "tool", "content": _text(item.get("output"), f"input[{index}].output"),
                "tool_call_id": call_id, "tool_name": tool_name_of_call(context, call_id)}
    raise BadRequest(f"unsupported input item type {kind!r} at index {index}; expected \"message\", "
                     '"function_call", "function_call_output" or "reasoning"')


def _append(messages: list[JsonObject], message: JsonObject) -> None:
    """Calls that follow an assistant message of the same input join it: one turn, as templates expect."""
    last = messages[-1] if messages else None
    if last and last["role"] == "assistant" and message.get("tool_calls") and not message["content"]:
        last["tool_calls"] = [*(last.get("tool_calls") or []), *message["tool_calls"]]
        last.setdefault("thinking", message.get("thinking", ""))
    else:
        messages.append(message)


def _images(content: Any) -> list[str]:
    """The ``input_image`` parts' images (data URLs; one without a URL is skipped, as in Ollama)."""
    if not isinstance(content, list):
        return []
    return [image_from_url(part["image_url"]) for part in content
            if isinstance(part, dict) and part.get("type") == "input_image" and part.get("image_url")]


def _text(content: Any, where: str) -> str:
    """A string, or the text of content parts (``input_text``, ``output_text``, …) joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest(f"invalid {where}: expected a string or an array of content parts")
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        elif kind == "input_image":
            continue  # the image itself: see _images
        elif kind == "input_file":
            raise BadRequest("file inputs are not supported")
        else:
            raise BadRequest(f"invalid content part in {where}: {kind!r} is not a text part")
    return "".join(texts)


def _call(item: JsonObject, index: int) -> JsonObject:
    name, call_id = item.get("name"), item.get("call_id")
    if not isinstance(name, str) or not name or not isinstance(call_id, str):
        raise BadRequest(f'invalid function_call at input[{index}]: "name" and "call_id" must be strings')
    try:
        arguments = arguments_object(item.get("arguments"), f"input[{index}]")
    except BadRequest:
        raise BadRequest(f"invalid function_call at input[{index}]: arguments must be a JSON object") from None
    return {"id": call_id, "function": {"name": name, "arguments": arguments}}


def _reasoning_text(item: JsonObject, index: int) -> str:
    """The plain text of a reasoning item (its content, else its summary); encrypted content is opaque."""
    for field in ("content", "summary"):
        if item.get(field):
            return _text(item[field], f"input[{index}].{field}")
    return ""


def _tools(value: Any) -> list[JsonObject] | None:
    """Responses' flat function tools → native ones (the chat form is accepted too)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequest('invalid value for "tools": expected an array of tools')
    native = []
    for i, tool in enumerate(value):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise BadRequest(f'unsupported tool at tools[{i}]: only "function" tools are served here, not {kind!r}')
        if isinstance(tool.get("function"), dict):
            native.append(tool)
            continue
        function = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
        native.append({"type": "function", "function": function})
    return native


def _tool_choice(value: Any) -> Any:
    if isinstance(value, dict) and value.get("type") != "function":
        raise BadRequest(f'unsupported "tool_choice" type {value.get("type")!r}; expected "auto", "none", '
                         '"required" or {"type": "function", "name": ...}')
    return value


def _options(body: JsonObject) -> JsonObject:
    """Responses' sampling fields → native options; temperature defaults to OpenAI's 1.0, as in Ollama."""
    options: JsonObject = {"temperature": 1.0 if body.get("temperature") is None else body["temperature"]}
    if body.get("top_p") is not None:
        options["top_p"] = body["top_p"]
    if body.get("max_output_tokens") is not None:
        options["num_predict"] = body["max_output_tokens"]
    return options


def _format(text: Any) -> str | JsonObject | None:
    """``text.format`` → native ``format``: ``"json"`` or the JSON schema."""
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise BadRequest('"text.format.schema" must be a JSON schema object')
        return schema
    raise BadRequest(f'invalid "text.format": type must be "text", "json_object" or "json_schema", not {kind!r}')


def _echo(body: JsonObject, instructions: str) -> JsonObject:
    """The request fields a response object repeats, with the defaults that applied."""
    reasoning = body.get("reasoning")
    given_text = body.get("text")
    text = given_text if isinstance(given_text, dict) else {}
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRequest('invalid value for "metadata": expected an object')
    return {
        "instructions": instructions or None,
        "tools": [_tool_echo(t) for t in body.get("tools") or []],
        "tool_choice": body.get("tool_choice") or "auto",
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "text": {**text, "format": text.get("format") or {"type": "text"}},
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
        if isinstance(reasoning, dict) else None,
        "temperature": 1.0 if body.get("temperature") is None else body["temperature"],
        "top_p": body.get("top_p"),
        "max_output_tokens": body.get("max_output_tokens"),
        "truncation": body.get("truncation") or "disabled",
        "metadata": metadata or {},
    }


def _tool_echo(tool: JsonObject) -> JsonObject:
    """A tool as Responses lists it (flat), whichever form it came in."""
    nested = tool.get("function")
    function = nested if isinstance(nested, dict) else tool
    return {"type": "function", "name": function.get("name"), "description": function.get("description"),
            "parameters": function.get("parameters"), "strict": tool.get("strict")}
