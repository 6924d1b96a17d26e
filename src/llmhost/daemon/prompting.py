"""Turning an API request plus a stored model into a runner request.

Precedence is Ollama's: request options > Modelfile parameters > defaults. The Modelfile's SYSTEM
applies when the request brings no system message of its own; its MESSAGE lines come first.
"""

from __future__ import annotations

from typing import Any

from llmhost.api.types import ChatRequest, GenerateRequest, Message


def effective_options(model_parameters: dict[str, Any], request_options: dict[str, Any]) -> dict[str, Any]:
    """Modelfile parameters overridden by the request's options (stop lists are replaced, not merged)."""
    merged = dict(model_parameters)
    merged.update(request_options)
    return merged


def runner_body(record, request: GenerateRequest | ChatRequest, runtime_options: dict,
                think: bool | str | None = None) -> dict:
    """The ``/completion`` body for the runner (see docs/runner-protocol.md).

    ``think`` is the request's thinking switch resolved against the model (None: the model has none).
    """
    body: dict[str, Any] = {
        "options": runtime_options,
        "format": request.format,
        "priority": request.priority,
        "truncate": request.truncate,
    }
    if request.logprobs is not None:
        body["logprobs"] = request.logprobs
    if request.logit_bias:
        body["logit_bias"] = request.logit_bias
    if isinstance(request, GenerateRequest):
        if request.raw or request.suffix:
            # Raw text as is; with a suffix, the prefix and suffix around the model's FIM tokens.
            body["prompt"] = request.prompt
            if request.suffix:
                body["suffix"] = request.suffix
            return body
        body["return_context"] = True
        if request.context:
            body["context"] = list(request.context)
    else:
        if request.offered_tools:
            body["tools"] = list(request.offered_tools)
        if request.tool_choice.to_json() is not None:
            body["tool_choice"] = request.tool_choice.to_json()
            body["parallel_tool_calls"] = request.parallel_tool_calls
    if think is not None:
        body["think"] = think
    template = getattr(request, "template", None) or record.template
    if template:
        body["template"] = template
    body["messages"] = [m.for_template() for m in conversation(record, request)]
    return body


def conversation(record, request: GenerateRequest | ChatRequest) -> list[Message]:
    """The full message list: Modelfile system and messages, then the request's own."""
    if isinstance(request, GenerateRequest):
        own = [Message("user", request.prompt)]
        system = request.system if request.system is not None else record.system
    else:
        own = list(request.messages)
        system = None if any(m.role == "system" for m in own) else record.system
    prefix = [Message(m["role"], m["content"]) for m in (record.messages or [])]
    if system:
        prefix.insert(0, Message("system", system))
    return prefix + own
