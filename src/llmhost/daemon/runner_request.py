"""Turning an API request plus a stored model into a runner request.

Precedence is Ollama's: request options > Modelfile parameters > defaults. The template: the
request's own (``template`` on generate), else the model's template layer, else none (the runner
uses the GGUF's). The Modelfile's SYSTEM comes first when a chat does not open with a system
message of its own, or when a generate request gives no (or an empty) ``system``; its MESSAGE
lines follow it (on generate, only without ``context``, as in Ollama).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

from llmhost.api.runner_protocol import CompletionBody
from llmhost.api.types import ChatRequest, GenerateRequest, Message
from llmhost.engine.templates import MAX_TEMPLATE_CHARS, compile_template, is_go_template
from llmhost.errors import BadRequest

if TYPE_CHECKING:
    from llmhost.registry.record import ModelRecord


def effective_options(model_parameters: dict[str, Any], request_options: dict[str, Any]) -> dict[str, Any]:
    """Modelfile parameters overridden by the request's options (stop lists are replaced, not merged)."""
    merged = dict(model_parameters)
    merged.update(request_options)
    return merged


def runner_body(record: ModelRecord, request: GenerateRequest | ChatRequest, runtime_options: dict[str, Any],
                think: bool | str | None = None) -> CompletionBody:
    """The ``/completion`` body for the runner (see docs/runner-protocol.md).

    ``think`` is the request's thinking switch resolved against the model (None: the model has none).
    A request's own Go template is parsed here, so a broken one is a 400 naming it before any model
    is loaded.
    """
    if record.adapters:
        raise BadRequest(f"model '{record.name.display()}' has a LoRA adapter (ADAPTER), which llmhost "
                         "does not support yet; create the model without it")
    own_template = getattr(request, "template", None)
    if own_template:
        check_request_template(own_template)
    template = own_template or record.template
    body: CompletionBody = {
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
            # Raw text as is; with a suffix, the template renders it if it reads .Suffix (a Go
            # template, as Ollama's), else the prefix and suffix go around the model's FIM tokens.
            body["prompt"] = request.prompt
            if request.images:  # the runner puts them where the prompt says [img], else before it
                body["images"] = list(request.images)
            if request.suffix:
                body["suffix"] = request.suffix
                if template:
                    body["template"] = template
                if think is not None:
                    body["think"] = think
            return body
        body["return_context"] = True
        if request.context:
            body["context"] = list(request.context)
    else:
        if request.offered_tools:
            body["tools"] = list(request.offered_tools)
        choice = request.tool_choice.to_json()
        if choice is not None:
            body["tool_choice"] = choice
            body["parallel_tool_calls"] = request.parallel_tool_calls
    if think is not None:
        body["think"] = think
    if template:
        body["template"] = template
    body["messages"] = [m.for_template() for m in conversation(record, request)]
    return body


def conversation(record: ModelRecord, request: GenerateRequest | ChatRequest) -> list[Message]:
    """The full message list: Modelfile system and messages, then the request's own (Ollama's order)."""
    model_messages = [Message(m["role"], m["content"]) for m in (record.messages or [])]
    if isinstance(request, GenerateRequest):
        own = [Message("user", request.prompt, images=request.images)]
        system = request.system or record.system
        if request.context:  # a continued generation already holds the model's messages
            model_messages = []
    else:
        own = list(request.messages)
        system = None if own and own[0].role == "system" else record.system
    prefix = [Message("system", system)] if system else []
    return prefix + model_messages + own


def check_request_template(source: str) -> None:
    """Refuse (400) a request's template that is too long, or a Go one that does not parse; the
    error names it and the line:column. (A Jinja one is compiled by the runner, which caches it.)"""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise BadRequest(f'the request\'s "template" is {len(source)} characters, more than the limit of '
                         f"{MAX_TEMPLATE_CHARS}")
    if is_go_template(source):
        _parse_go(source)


@lru_cache(maxsize=16)
def _parse_go(source: str) -> None:
    compile_template(source, name='"template"')  # raises TemplateError; only successes are cached
