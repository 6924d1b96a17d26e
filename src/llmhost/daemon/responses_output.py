"""Native deltas → Responses output items, the stream events that build them, and the response object.

Output items come in the order the model produced them: reasoning, message, function calls. The same
builder serves streamed and whole responses, so both carry the same output.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from dataclasses import dataclass

from llmhost.api.types import JsonObject, Message
from llmhost.daemon.inference import Completion, Delta, metrics


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


class Output:
    """A completion's deltas as Responses output items, and the stream events that build them.

    One reasoning or message item is open at a time; a change of kind (thinking → answer → call)
    closes it, so the items keep the order the model produced them in. Non-streaming responses use
    the same builder and drop the events, so both modes give the same output.
    """

    def __init__(self) -> None:
        self.items: list[JsonObject] = []  # closed items, in output order
        self._open: JsonObject | None = None
        self._calls: list[JsonObject] = []  # native tool calls, for the stored conversation

    def feed(self, delta: Delta) -> list[JsonObject]:
        events = []
        if delta.thinking:
            events += self._extend("reasoning", delta.thinking)
        if delta.content:
            events += self._extend("message", delta.content)
        for call in delta.tool_calls:
            events += self._close("completed") + self._call(call)
        return events

    def finish(self, status: str) -> list[JsonObject]:
        """Close the open item with ``status``; an answer without text or calls still has a message."""
        events = self._close(status)
        if all(item["type"] == "reasoning" for item in self.items):
            events += self._extend("message", "") + self._close(status)
        return events

    def answer(self) -> JsonObject:
        """The answer as a native assistant message (what the next turn's template renders)."""
        def text(kind: str) -> str:
            return "".join(item["content"][0]["text"] for item in self.items if item["type"] == kind)
        message = {"role": "assistant", "content": text("message"), "thinking": text("reasoning"),
                   "tool_calls": self._calls}
        return Message.from_json(message, 0).to_json()

    def _extend(self, kind: str, text: str) -> list[JsonObject]:
        item = self._open
        events: list[JsonObject] = []
        if not item or item["type"] != kind:
            events = self._close("completed")
            item, started = self._start(kind)
            events += started
        item["content"][0]["text"] += text
        if text:
            events.append({"type": "response.output_text.delta" if kind == "message" else
                           "response.reasoning_text.delta", **self._where(item), "delta": text,
                           **({"logprobs": []} if kind == "message" else {})})
        return events

    def _start(self, kind: str) -> tuple[JsonObject, list[JsonObject]]:
        """Open a new item of ``kind``: the item, and the events that announce it."""
        item: JsonObject
        part: JsonObject
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
        return item, events

    def _close(self, status: str) -> list[JsonObject]:
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

    def _call(self, call: JsonObject) -> list[JsonObject]:
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

    def _where(self, item: JsonObject) -> JsonObject:
        return {"item_id": item["id"], "output_index": len(self.items), "content_index": 0}


@dataclass(frozen=True)
class Head:
    """What every form of one response shares: id, creation time, model, and the echoed request."""

    id: str
    created_at: int
    model: str
    previous_response_id: str | None
    echo: JsonObject

    def object(self, status: str, output: list[JsonObject] | None = None, usage: JsonObject | None = None,
               error: JsonObject | None = None) -> JsonObject:
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


def response_usage(final: JsonObject, completion: Completion) -> JsonObject:
    """Ollama's accounting: input is the whole prompt; ``cached_tokens`` the part the KV cache supplied."""
    counts = metrics(final, completion)
    prompt, output = counts["prompt_eval_count"], counts["eval_count"]
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": counts["prompt_cached_count"], "cache_write_tokens": 0},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + output}
