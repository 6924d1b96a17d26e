"""Native deltas → OpenAI's answers: one completion object, or the choices of its SSE chunks.

Shapes follow OpenAI's API as Ollama serves it: reasoning both as Ollama's ``reasoning`` and as the
``reasoning_content`` most clients read, tool-call arguments as JSON strings, ``logprobs`` left out
when there are none, and usage that counts cached prompt tokens (``prompt_tokens_details``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

from llmhost.api.types import JsonObject
from llmhost.daemon.inference import Delta


def answer_base(model: str, chat: bool) -> JsonObject:
    """The fields every object of one answer shares (a whole answer's, or each chunk's)."""
    return {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_llmhost"}


def whole_answer(base: JsonObject, items: list[Delta], final: JsonObject, chat: bool) -> JsonObject:
    """The non-streaming answer: every delta joined into one choice, then the usage."""
    calls = [call for item in items for call in item.tool_calls]
    text = "".join(item.content for item in items)
    if chat:
        message = {"role": "assistant", "content": text, **_reasoning("".join(item.thinking for item in items))}
        if calls:
            message["tool_calls"] = _openai_calls(calls)
        choice: JsonObject = {"index": 0, "message": message}
    else:
        choice = {"index": 0, "text": text}
    choice["finish_reason"] = _finish_reason(final, bool(calls))
    choice.update(_logprobs_field([p for item in items for p in item.logprobs]))
    return {**base, "choices": [choice], "usage": usage(final)}


def delta_choices(delta: Delta, chat: bool, include_role: bool) -> list[JsonObject]:
    """A delta as stream choices: reasoning in a chunk of its own before content or calls (as Ollama)."""
    if not chat:
        return [{"index": 0, "text": delta.content, "finish_reason": None, **_logprobs_field(delta.logprobs)}]
    choices = []
    head = {"role": "assistant"} if include_role else {}
    logprobs = _logprobs_field(delta.logprobs)
    if delta.thinking:
        choices.append({"index": 0, "delta": {**head, **_reasoning(delta.thinking)}, "finish_reason": None,
                        **logprobs})
        if not (delta.content or delta.tool_calls):
            return choices
        head, logprobs = {}, {}
    body: JsonObject = {**head, "content": delta.content}
    if delta.tool_calls:
        body["tool_calls"] = _openai_calls(delta.tool_calls)
    choices.append({"index": 0, "delta": body, "finish_reason": None, **logprobs})
    return choices


def final_choice(final: JsonObject, called: bool, chat: bool) -> JsonObject:
    """The stream's last choice: empty, with the finish reason."""
    finish = _finish_reason(final, called)
    return {"index": 0, "delta": {}, "finish_reason": finish} if chat else {"index": 0, "text": "", "finish_reason": finish}


def usage(final: JsonObject) -> JsonObject:
    """OpenAI's usage from the runner's final line: the prompt counts its cached tokens too."""
    cached = final.get("prompt_cached_count", 0)
    prompt = final.get("prompt_eval_count", 0) + cached
    completion = final.get("eval_count", 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _finish_reason(final: JsonObject, called: bool) -> str:
    reason = final.get("done_reason") or "stop"
    return "tool_calls" if reason == "stop" and called else reason


def _openai_calls(calls: Any) -> list[JsonObject]:
    return [{"id": c["id"], "index": c["function"]["index"], "type": "function",
             "function": {"name": c["function"]["name"],
                          "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False)}}
            for c in calls]


def _reasoning(thinking: str) -> JsonObject:
    # Ollama's /v1 field is "reasoning"; most OpenAI-protocol clients read "reasoning_content".
    return {"reasoning": thinking, "reasoning_content": thinking} if thinking else {}


def _logprobs_field(logprobs: Iterable[JsonObject]) -> JsonObject:
    """``logprobs`` in OpenAI's shape, left out when there are none (as Ollama does)."""
    return {"logprobs": {"content": list(logprobs)}} if logprobs else {}
