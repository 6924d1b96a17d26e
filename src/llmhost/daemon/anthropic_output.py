"""Native deltas → Anthropic's answers: one message, or the SSE events that build it.

A thinking or text block stays open while its kind continues; a tool call (released whole by the
runner) is a block of its own with one ``input_json_delta``. Usage follows Anthropic's accounting.
"""

from __future__ import annotations

import json
from typing import Any

from llmhost.api.types import JsonObject
from llmhost.daemon.inference import Delta


def _stop_reason(final: JsonObject, called: bool) -> str:
    # The runner's "stop" covers an end-of-generation token and a stop string alike, without saying
    # which string matched: "stop_sequence" cannot be told apart, so it reads "end_turn".
    if final.get("done_reason") == "length":
        return "max_tokens"
    return "tool_use" if called else "end_turn"


def _usage(final: JsonObject) -> JsonObject:
    """Anthropic's accounting: ``input_tokens`` excludes cache reads (the prompt is input_tokens +
    cache_read_input_tokens + cache_creation_input_tokens), unlike Ollama's ``prompt_eval_count``.
    The runner's final line already counts that way: ``prompt_eval_count`` is what it evaluated,
    ``prompt_cached_count`` what the KV cache supplied. Caching here is automatic and free, so
    nothing is ever "created"."""
    return {"input_tokens": final.get("prompt_eval_count", 0), "output_tokens": final.get("eval_count", 0),
            "cache_read_input_tokens": final.get("prompt_cached_count", 0), "cache_creation_input_tokens": 0}


def _tool_use_block(call: JsonObject, input_: Any) -> JsonObject:
    return {"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input_}


# Anthropic signs its thinking so it can be checked when sent back; a local model's thinking has no
# signature to check (sent back, it is taken as is). The field is there because clients expect it.
_SIGNATURE = ""


def whole_message(message: JsonObject, items: list[Delta], final: JsonObject) -> JsonObject:
    """The non-streaming answer: thinking, then text, then one block per tool call."""
    thinking = "".join(item.thinking for item in items)
    text = "".join(item.content for item in items)
    calls = [call for item in items for call in item.tool_calls]
    content: list[JsonObject] = []
    if thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": _SIGNATURE})
    if text:
        content.append({"type": "text", "text": text})
    content += [_tool_use_block(c, c["function"]["arguments"]) for c in calls]
    return {**message, "content": content, "stop_reason": _stop_reason(final, bool(calls)), "stop_sequence": None,
            "usage": _usage(final)}


def sse(event: str, data: JsonObject) -> bytes:
    """One SSE event; its data repeats the event's name as ``type``, as Anthropic's do."""
    return f"event: {event}\ndata: {json.dumps({'type': event, **data}, ensure_ascii=False)}\n\n".encode()


class Blocks:
    """Deltas → content-block events: a thinking or text block stays open while its kind continues;
    a tool call (released whole by the runner) is a block of its own with one ``input_json_delta``."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None
        self.called = False

    def events(self, delta: Delta) -> list[bytes]:
        out = []
        for kind, piece in (("thinking", delta.thinking), ("text", delta.content)):
            if piece:
                if self.open != kind:
                    out += self.close() + self._start({"type": kind, kind: "", **(
                        {"signature": _SIGNATURE} if kind == "thinking" else {})})
                    self.open = kind
                out.append(sse("content_block_delta", {"index": self.index,
                                                        "delta": {"type": f"{kind}_delta", kind: piece}}))
        for call in delta.tool_calls:
            out += self.close() + self._start(_tool_use_block(call, {}))
            arguments = json.dumps(call["function"]["arguments"], ensure_ascii=False)
            out.append(sse("content_block_delta", {"index": self.index,
                                                    "delta": {"type": "input_json_delta", "partial_json": arguments}}))
            out.append(sse("content_block_stop", {"index": self.index}))
            self.called = True
        return out

    def close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [sse("content_block_stop", {"index": self.index})]

    def _start(self, block: JsonObject) -> list[bytes]:
        self.index += 1
        return [sse("content_block_start", {"index": self.index, "content_block": block})]


def start_events(message: JsonObject) -> bytes:
    """``message_start`` (and a ``ping``). The prompt's counts come with the final line only, so it says 0
    and ``message_delta`` carries the real input and cache counts (Anthropic's clients take those)."""
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None, "usage": _usage({})}
    return sse("message_start", {"message": start}) + sse("ping", {})


def end_events(blocks: Blocks, final: JsonObject) -> bytes:
    """Close the open block, then ``message_delta`` (stop reason, usage) and ``message_stop``."""
    delta = {"stop_reason": _stop_reason(final, blocks.called), "stop_sequence": None}
    end = sse("message_delta", {"delta": delta, "usage": _usage(final)}) + sse("message_stop", {})
    return b"".join(blocks.close()) + end
