"""OpenAI's Responses API (``/v1/responses``), stateful, translated onto the native inference path.

As ``routes_openai`` does for chat: the request becomes a native ``ChatRequest``, runs through
``start_completion``/``deltas``, and comes back as a response object or as Responses' SSE events
(``event: <type>`` / ``data: {..., "sequence_number"}``, no ``[DONE]``). Shapes follow the official
client's types and Ollama's stateless ``/v1/responses``.

Beyond Ollama, a response is stored (``store``, default true) with the whole conversation behind it
(``responses_store.py``), and ``previous_response_id`` continues it: the client sends only the new
input, the native path renders the same prefix, and the runner continues from the KV cache it holds
(``usage.input_tokens_details.cached_tokens`` says how much). As in OpenAI's API, ``instructions``,
``tools`` and sampling fields apply to their own turn only; the model defaults to the previous one's.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from aiohttp import web

from llmhost.api.tools import arguments_object
from llmhost.api.types import ChatRequest, Message
from llmhost.daemon.http import read_json
from llmhost.daemon.inference import Completion, Delta, deltas, metrics, start_completion
from llmhost.daemon.responses_store import RESPONSES_DIR, ResponseStore, StoredResponse, new_response_id
from llmhost.daemon.routes_openai import think_from_effort, tool_name_of_call
from llmhost.daemon.state import DaemonState, state_of
from llmhost.errors import BadRequest, LlmhostError

routes = web.RouteTableDef()
STORE_KEY = web.AppKey("responses_store", ResponseStore)


def install(app: web.Application, state: DaemonState) -> None:
    """Add the Responses routes, storing responses under ``<models>/responses``."""
    app[STORE_KEY] = ResponseStore(state.settings.models / RESPONSES_DIR)
    app.add_routes(routes)


# --- request → native ------------------------------------------------------------------------------

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")


@dataclass(frozen=True)
class Turn:
    """One Responses request made native: the chat request, what to store, what the response repeats."""

    request: ChatRequest
    conversation: tuple[dict, ...]  # native messages before the answer, without this turn's instructions
    echo: dict[str, Any]  # request fields the response object repeats
    store: bool


def make_turn(body: dict, previous: StoredResponse | None) -> Turn:
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


def _refuse_unsupported(body: dict) -> None:
    if body.get("background"):
        raise BadRequest("background responses are not supported; stream the response instead")
    if body.get("conversation") is not None:
        raise BadRequest('"conversation" objects are not supported; continue a conversation with '
                         '"previous_response_id"')


def _instructions(body: dict) -> str:
    value = body.get("instructions")
    if value is not None and not isinstance(value, str):
        raise BadRequest('invalid value for "instructions": expected a string')
    return value or ""


def _input_messages(value: Any, history: list[dict]) -> list[dict]:
    """``input`` → native messages; ``history`` names the calls a ``function_call_output`` answers."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise BadRequest('"input" must be a string or a non-empty array of input items')
    messages: list[dict] = []
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


def _input_item(item: Any, index: int, context: list[dict]) -> dict:
    if not isinstance(item, dict):
        raise BadRequest(f"invalid input item at index {index}: expected an object")
    kind = item.get("type") or ("message" if "role" in item else "")
    if kind == "message":
        role = _ROLES.get(str(item.get("role")))
        if role is None:
            raise BadRequest(f'invalid input item at index {index}: role must be "user", "assistant", '
                             f'"system" or "developer", not {item.get("role")!r}')
        return {"role": role, "content": _text(item.get("content"), f"input[{index}].content")}
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


def _append(messages: list[dict], message: dict) -> None:
    """Calls that follow an assistant message of the same input join it: one turn, as templates expect."""
    last = messages[-1] if messages else None
    if last and last["role"] == "assistant" and message.get("tool_calls") and not message["content"]:
        last["tool_calls"] = [*(last.get("tool_calls") or []), *message["tool_calls"]]
        last.setdefault("thinking", message.get("thinking", ""))
    else:
        messages.append(message)


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
            raise BadRequest("this model does not support images")
        elif kind == "input_file":
            raise BadRequest("file inputs are not supported")
        else:
            raise BadRequest(f"invalid content part in {where}: {kind!r} is not a text part")
    return "".join(texts)


def _call(item: dict, index: int) -> dict:
    name, call_id = item.get("name"), item.get("call_id")
    if not isinstance(name, str) or not name or not isinstance(call_id, str):
        raise BadRequest(f'invalid function_call at input[{index}]: "name" and "call_id" must be strings')
    try:
        arguments = arguments_object(item.get("arguments"), f"input[{index}]")
    except BadRequest:
        raise BadRequest(f"invalid function_call at input[{index}]: arguments must be a JSON object") from None
    return {"id": call_id, "function": {"name": name, "arguments": arguments}}


def _reasoning_text(item: dict, index: int) -> str:
    """The plain text of a reasoning item (its content, else its summary); encrypted content is opaque."""
    for field in ("content", "summary"):
        if item.get(field):
            return _text(item[field], f"input[{index}].{field}")
    return ""


def _tools(value: Any) -> list[dict] | None:
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


def _options(body: dict) -> dict:
    """Responses' sampling fields → native options; temperature defaults to OpenAI's 1.0, as in Ollama."""
    options: dict[str, Any] = {"temperature": 1.0 if body.get("temperature") is None else body["temperature"]}
    if body.get("top_p") is not None:
        options["top_p"] = body["top_p"]
    if body.get("max_output_tokens") is not None:
        options["num_predict"] = body["max_output_tokens"]
    return options


def _format(text: Any) -> str | dict | None:
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
        if not isinstance(fmt.get("schema"), dict):
            raise BadRequest('"text.format.schema" must be a JSON schema object')
        return fmt["schema"]
    raise BadRequest(f'invalid "text.format": type must be "text", "json_object" or "json_schema", not {kind!r}')


def _echo(body: dict, instructions: str) -> dict[str, Any]:
    """The request fields a response object repeats, with the defaults that applied."""
    reasoning = body.get("reasoning")
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
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


def _tool_echo(tool: dict) -> dict:
    """A tool as Responses lists it (flat), whichever form it came in."""
    function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    return {"type": "function", "name": function.get("name"), "description": function.get("description"),
            "parameters": function.get("parameters"), "strict": tool.get("strict")}


# --- native → response -----------------------------------------------------------------------------


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


class Output:
    """A completion's deltas as Responses output items, and the stream events that build them.

    One reasoning or message item is open at a time; a change of kind (thinking → answer → call)
    closes it, so the items keep the order the model produced them in. Non-streaming responses use
    the same builder and drop the events, so both modes give the same output.
    """

    def __init__(self) -> None:
        self.items: list[dict] = []  # closed items, in output order
        self._open: dict | None = None
        self._calls: list[dict] = []  # native tool calls, for the stored conversation

    def feed(self, delta: Delta) -> list[dict]:
        events = []
        if delta.thinking:
            events += self._extend("reasoning", delta.thinking)
        if delta.content:
            events += self._extend("message", delta.content)
        for call in delta.tool_calls:
            events += self._close("completed") + self._call(call)
        return events

    def finish(self, status: str) -> list[dict]:
        """Close the open item with ``status``; an answer without text or calls still has a message."""
        events = self._close(status)
        if all(item["type"] == "reasoning" for item in self.items):
            events += self._extend("message", "") + self._close(status)
        return events

    def answer(self) -> dict:
        """The answer as a native assistant message (what the next turn's template renders)."""
        def text(kind: str) -> str:
            return "".join(item["content"][0]["text"] for item in self.items if item["type"] == kind)
        message = {"role": "assistant", "content": text("message"), "thinking": text("reasoning"),
                   "tool_calls": self._calls}
        return Message.from_json(message, 0).to_json()

    def _extend(self, kind: str, text: str) -> list[dict]:
        events = [] if self._open and self._open["type"] == kind else self._close("completed") + self._start(kind)
        item = self._open
        item["content"][0]["text"] += text
        if text:
            events.append({"type": "response.output_text.delta" if kind == "message" else
                           "response.reasoning_text.delta", **self._where(item), "delta": text,
                           **({"logprobs": []} if kind == "message" else {})})
        return events

    def _start(self, kind: str) -> list[dict]:
        if kind == "message":
            item = {"id": _item_id("msg"), "type": "message", "status": "in_progress", "role": "assistant",
                    "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            item = {"id": _item_id("rs"), "type": "reasoning", "status": "in_progress", "summary": [],
                    "content": []}
            part = {"type": "reasoning_text", "text": ""}
        events = [{"type": "response.output_item.added", "output_index": len(self.items), "item": copy.deepcopy(item)},
                  {"type": "response.content_part.added", **self._where(item), "part": dict(part)}]
        item["content"].append(part)
        self._open = item
        return events

    def _close(self, status: str) -> list[dict]:
        item, self._open = self._open, None
        if item is None:
            return []
        where, part = self._where(item), item["content"][0]
        item["status"] = status
        if item["type"] == "message":
            done = {"type": "response.output_text.done", **where, "text": part["text"], "logprobs": []}
        else:  # the raw thinking is the only summary there is; clients that show summaries read it there
            item["summary"] = [{"type": "summary_text", "text": part["text"]}]
            done = {"type": "response.reasoning_text.done", **where, "text": part["text"]}
        self.items.append(item)
        return [done, {"type": "response.content_part.done", **where, "part": dict(part)},
                {"type": "response.output_item.done", "output_index": where["output_index"],
                 "item": copy.deepcopy(item)}]

    def _call(self, call: dict) -> list[dict]:
        function = call["function"]
        arguments = json.dumps(function["arguments"], ensure_ascii=False)
        item = {"id": _item_id("fc"), "type": "function_call", "status": "completed", "call_id": call["id"],
                "name": function["name"], "arguments": arguments}
        where = {"item_id": item["id"], "output_index": len(self.items)}
        self.items.append(item)
        self._calls.append({"id": call["id"], "function": {"name": function["name"],
                                                           "arguments": function["arguments"]}})
        return [{"type": "response.output_item.added", "output_index": where["output_index"],
                 "item": {**item, "status": "in_progress", "arguments": ""}},
                {"type": "response.function_call_arguments.delta", **where, "delta": arguments},
                {"type": "response.function_call_arguments.done", **where, "name": item["name"],
                 "arguments": arguments},
                {"type": "response.output_item.done", "output_index": where["output_index"], "item": dict(item)}]

    def _where(self, item: dict) -> dict:
        return {"item_id": item["id"], "output_index": len(self.items), "content_index": 0}


@dataclass(frozen=True)
class Head:
    """What every form of one response shares: id, creation time, model, and the echoed request."""

    id: str
    created_at: int
    model: str
    previous_response_id: str | None
    echo: dict[str, Any]

    def object(self, status: str, output: list[dict] | None = None, usage: dict | None = None,
               error: dict | None = None) -> dict:
        """The response object (OpenAI's ``Response``) in ``status``."""
        finished = status in ("completed", "incomplete", "failed")
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "completed_at": int(time.time()) if finished else None, "status": status, "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "model": self.model, "output": copy.deepcopy(output or []), "usage": usage,
            "previous_response_id": self.previous_response_id, **self.echo,
            "background": False, "service_tier": "default", "user": None,
        }


def _usage(final: dict, completion: Completion) -> dict:
    """Ollama's accounting: input is the whole prompt; ``cached_tokens`` the part the KV cache supplied."""
    counts = metrics(final, completion)
    prompt, output = counts["prompt_eval_count"], counts["eval_count"]
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": counts["prompt_cached_count"], "cache_write_tokens": 0},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + output}


# --- handlers --------------------------------------------------------------------------------------


def store_of(request: web.Request) -> ResponseStore:
    return request.app[STORE_KEY]


@routes.post("/v1/responses")
async def create_response(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    previous_id = body.get("previous_response_id")
    previous = None if previous_id is None else await store_of(request).get(previous_id, "Previous response")
    turn = make_turn(body, previous)
    async with await start_completion(state_of(request), turn.request) as completion:
        head = Head(new_response_id(), int(time.time()), completion.model, previous_id, turn.echo)
        items = deltas(completion)
        if turn.request.stream:
            return await _stream(request, items, completion, turn, head)
        output, final = Output(), {}
        async for item in items:
            if isinstance(item, Delta):
                output.feed(item)
            else:
                final = item
    _, response = await _finish(request, output, final, completion, turn, head)
    return web.json_response(response)


async def _finish(request: web.Request, output: Output, final: dict, completion: Completion, turn: Turn,
                  head: Head) -> tuple[list[dict], dict]:
    """Close the output, build the response object and store it (before the client can ask for it)."""
    status = "incomplete" if final.get("done_reason") == "length" else "completed"
    events = output.finish(status)
    response = head.object(status, output.items, _usage(final, completion))
    if turn.store:
        stored = StoredResponse(response, (*turn.conversation, output.answer()))
        await store_of(request).put(head.id, stored)
    return events, response


class EventStream:
    """Responses' SSE: ``event:`` and ``data:`` lines, each event numbered in order."""

    def __init__(self, response: web.StreamResponse):
        self.response = response
        self.sequence = 0

    async def send(self, event: dict) -> None:
        data = json.dumps({**event, "sequence_number": self.sequence}, ensure_ascii=False)
        self.sequence += 1
        await self.response.write(f"event: {event['type']}\ndata: {data}\n\n".encode())


async def _stream(request: web.Request, items: AsyncIterator[Delta | dict], completion: Completion, turn: Turn,
                  head: Head) -> web.StreamResponse:
    first = await items.__anext__()  # errors before the first line are still plain HTTP errors
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    events, output = EventStream(response), Output()
    for kind in ("response.created", "response.in_progress"):
        await events.send({"type": kind, "response": head.object("in_progress")})
    try:
        item = first
        while isinstance(item, Delta):
            for event in output.feed(item):
                await events.send(event)
            item = await anext(items, {})
        closing, final = await _finish(request, output, item, completion, turn, head)
        for event in closing:
            await events.send(event)
        await events.send({"type": f"response.{final['status']}", "response": final})
    except LlmhostError as e:
        failed = head.object("failed", output.items, error={"code": "server_error", "message": e.message})
        await events.send({"type": "response.failed", "response": failed})
    await response.write_eof()
    return response


@routes.get("/v1/responses/{response_id}")
async def retrieve_response(request: web.Request) -> web.Response:
    if request.query.get("stream", "").lower() == "true":
        raise BadRequest("streaming a stored response again is not supported; retrieve it without stream")
    stored = await store_of(request).get(request.match_info["response_id"])
    return web.json_response(stored.response)


@routes.delete("/v1/responses/{response_id}")
async def delete_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    await store_of(request).delete(response_id)
    return web.json_response({"id": response_id, "object": "response.deleted", "deleted": True})
