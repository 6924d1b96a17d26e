"""The runner's ``/completion`` wire (docs/runner-protocol.md), typed: the body the daemon sends and
the final line the runner answers with.

The daemon builds a ``CompletionBody`` (``daemon/runner_request.py``) and reads ``FinalLine`` values;
the engine writes ``FinalLine`` (``engine/sequence.Finished``) and validates a received body into its
own ``CompletionRequest`` (``engine/prompt.py``), since a body arriving on a socket is untrusted JSON
until checked. Both sides import these, so a field renamed on one side is a type error on the other.
"""

from __future__ import annotations

from typing import Any, TypedDict


class _CompletionBodyBase(TypedDict):
    options: dict[str, Any]  # the request's runtime options, Modelfile parameters merged in
    format: str | dict[str, Any] | None  # "json", a JSON schema, or nothing
    priority: int
    truncate: bool


class CompletionBody(_CompletionBodyBase, total=False):
    """``POST /completion``: either ``messages`` (rendered by the template) or a raw ``prompt``."""

    messages: list[dict[str, Any]]  # Message.for_template() of each, the model's own first
    prompt: str
    suffix: str  # fill-in-the-middle
    images: list[str]  # base64, for a raw prompt (messages carry their own)
    template: str  # Jinja or Ollama's Go template; absent: the model's own
    think: bool | str  # absent: the model has no thinking switch
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, str]  # "required" or {"name": ...}; absent: auto
    parallel_tool_calls: bool
    context: list[int]  # token ids of an earlier generate (evaluated as a prefix)
    return_context: bool
    logprobs: int  # top alternatives per token (0..20)
    logit_bias: dict[str, float]


class _FinalLineBase(TypedDict):
    done: bool
    done_reason: str  # "stop" | "length"
    prompt_eval_count: int  # prompt tokens evaluated (not reused from the KV cache)
    prompt_cached_count: int  # prompt tokens the KV cache supplied
    prompt_eval_duration: int  # ns
    eval_count: int
    eval_duration: int  # ns


class FinalLine(_FinalLineBase, total=False):
    """The runner's last ``/completion`` line."""

    context: list[int]  # prompt + generated token ids, when the body asked (``return_context``)
