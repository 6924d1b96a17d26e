"""The native API's answers, typed (as Ollama's ``api/types.go`` holds responses beside requests); the
runner's lines they are made from are typed in ``api/runner_protocol.py``.

TypedDicts, not classes: these are the JSON objects themselves, built once and written out, so the
type checker sees every field name and type where a route or the runner builds one.
"""

from __future__ import annotations

from typing import Any, TypedDict


class Metrics(TypedDict):
    """Ollama's final-chunk fields of generate and chat (durations in ns); ``prompt_cached_count`` is ours."""

    total_duration: int
    load_duration: int
    prompt_eval_count: int  # the whole prompt, cached tokens included, as Ollama counts it
    prompt_eval_duration: int
    prompt_cached_count: int
    eval_count: int
    eval_duration: int


class _GenerateFieldsBase(TypedDict):
    response: str


class GenerateFields(_GenerateFieldsBase, total=False):
    """What one ``/api/generate`` chunk says beyond model, created_at, done."""

    thinking: str


class _ChatMessageBase(TypedDict):
    role: str
    content: str


class ChatMessage(_ChatMessageBase, total=False):
    """The assistant's ``message`` in an ``/api/chat`` chunk."""

    thinking: str
    tool_calls: list[dict[str, Any]]  # native shape: {"id", "function": {"index", "name", "arguments"}}


class ChatFields(TypedDict):
    """What one ``/api/chat`` chunk says beyond model, created_at, done."""

    message: ChatMessage


class ModelUsage(TypedDict):
    """llmhost's fields in an ``/api/ps`` entry: how a loaded model is used now."""

    parallel: int
    slots_in_use: int
    queue_depth: int
    cache_hit_rate: float | None  # cached ÷ all prompt tokens since its runner started


class _ProcessModelBase(ModelUsage):
    name: str
    model: str
    size: int
    size_vram: int
    digest: str
    details: dict[str, Any]
    expires_at: str
    context_length: int


class ProcessModel(_ProcessModelBase, total=False):
    """One ``/api/ps`` entry: Ollama's ProcessModelResponse plus llmhost's usage and RPC split."""

    rpc: list[dict[str, Any]]  # {"server", "layers", "bytes"} per RPC worker holding layers
