"""A ``/completion`` body → validated request → prompt tokens that fit the context → a Sequence.

Everything that can reject a request (bad fields, a failing template, an invalid schema, a prompt
that does not fit with ``truncate: false``) happens here, before the engine sees it, so such errors
are a 400 with nothing streamed.

Kept tokens (``num_keep``): what truncation of a long prompt and a context shift never drop. With
``num_keep`` ≥ 0 it is that many leading tokens; by default (-1) it is the rendered system prompt
when the request has leading system messages, else nothing — and a leading BOS is always kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from llmhost.engine.detokenizer import Detokenizer
from llmhost.engine.llamacpp import Model
from llmhost.engine.sampling import SamplingParams, build_sampler, grammar_for_format
from llmhost.engine.sequence import Sequence, Sink
from llmhost.engine.kv_cache import common_prefix_len
from llmhost.engine.templates import CHATML, ChatTemplate, TemplateError, is_go_template, validate_messages
from llmhost.errors import BadRequest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletionRequest:
    """One validated ``POST /completion`` body (see docs/runner-protocol.md)."""

    messages: list[dict[str, Any]] | None
    prompt: str | None
    template: str | None
    params: SamplingParams
    grammar: str | None
    priority: int
    truncate: bool

    @classmethod
    def from_json(cls, body: Any) -> "CompletionRequest":
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        messages, prompt = body.get("messages"), body.get("prompt")
        if (messages is None) == (prompt is None):
            raise BadRequest('exactly one of "messages" and "prompt" is required')
        if prompt is not None and not isinstance(prompt, str):
            raise BadRequest('"prompt" must be a string')
        template = body.get("template")
        if template is not None and not isinstance(template, str):
            raise BadRequest('"template" must be a string')
        priority = body.get("priority", 0)
        if priority is None:
            priority = 0
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise BadRequest('"priority" must be an integer')
        truncate = body.get("truncate", True)
        if not isinstance(truncate, bool):
            raise BadRequest('"truncate" must be a boolean')
        return cls(
            messages=validate_messages(messages) if messages is not None else None,
            prompt=prompt,
            template=template or None,
            params=SamplingParams.from_options(body.get("options")),
            grammar=grammar_for_format(body.get("format")),
            priority=priority,
            truncate=truncate,
        )


@lru_cache(maxsize=32)
def _compiled(source: str, bos_token: str, eos_token: str) -> ChatTemplate:
    # Requests usually repeat the same few templates; compiling Jinja costs milliseconds.
    return ChatTemplate(source, bos_token=bos_token, eos_token=eos_token)


class PromptBuilder:
    """Renders, tokenizes and fits prompts for one model and per-sequence context size."""

    def __init__(self, model: Model, ctx_size: int):
        self.model = model
        self.ctx_size = ctx_size
        self.default_template = model.chat_template() or CHATML
        self._bos_text = model.token_text(model.bos)
        self._eos_text = model.token_text(model.eos)

    def template(self, source: str | None = None) -> ChatTemplate:
        if source and is_go_template(source):
            _warn_go_template(source)
            source = None
        return _compiled(source or self.default_template, self._bos_text, self._eos_text)

    def render(self, req: CompletionRequest) -> str:
        if req.messages is None:
            return req.prompt or ""
        return self.template(req.template).render(req.messages, add_generation_prompt=True)

    def tokens(self, req: CompletionRequest) -> np.ndarray:
        """Prompt tokens of a request, cut to fit the context (or BadRequest with truncate false)."""
        return self.prepare(req)[0]

    def prepare(self, req: CompletionRequest) -> tuple[np.ndarray, int]:
        """Prompt tokens that fit the context, and how many leading ones are kept (see above)."""
        tokens = self._tokenize(self.render(req))
        keep = self.keep_tokens(req, tokens)
        tokens = fit_context(
            tokens,
            self.ctx_size,
            num_keep=keep,
            num_predict=req.params.num_predict,
            truncate=req.truncate,
            bos=self._bos,
        )
        return tokens, min(keep, len(tokens))

    def keep_tokens(self, req: CompletionRequest, tokens: np.ndarray) -> int:
        """Leading tokens of ``tokens`` that truncation and context shift keep."""
        leading_bos = int(self._bos is not None and len(tokens) > 0 and tokens[0] == self._bos)
        if req.params.num_keep >= 0:
            return max(req.params.num_keep, leading_bos)
        system = _leading_system(req.messages or [])
        if not system:
            return leading_bos
        try:
            rendered = self.template(req.template).render(system, add_generation_prompt=False)
        except TemplateError:  # some templates insist on a user turn: keep what is certain
            return leading_bos
        return max(common_prefix_len(self._tokenize(rendered), tokens), leading_bos)

    def sequence(self, req: CompletionRequest, sink: Sink) -> Sequence | None:
        """A ready-to-submit Sequence for ``req`` (None when the prompt has no tokens at all)."""
        tokens, keep = self.prepare(req)
        if len(tokens) == 0:
            return None
        sampler = build_sampler(self.model, req.params, grammar=req.grammar, n_ctx=self.ctx_size, prompt=tokens)
        num_predict = req.params.num_predict
        return Sequence(
            tokens,
            sampler=sampler,
            detokenizer=Detokenizer(req.params.stop),
            max_tokens=num_predict if num_predict >= 0 else None,
            sink=sink,
            priority=req.priority,
            n_keep=keep,
        )

    @property
    def _bos(self) -> int | None:
        return self.model.bos if self.model.add_bos else None

    def _tokenize(self, text: str) -> np.ndarray:
        return self._single_bos(self.model.tokenize(text, add_special=True, parse_special=True))

    def _single_bos(self, tokens: np.ndarray) -> np.ndarray:
        # Templates that print {{ bos_token }} plus the tokenizer's own BOS would give two.
        bos = self.model.bos
        if self.model.add_bos and len(tokens) >= 2 and tokens[0] == bos and tokens[1] == bos:
            return tokens[1:]
        return tokens


def _leading_system(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    system = []
    for message in messages:
        if message.get("role") != "system":
            break
        system.append(message)
    return system


_warned_go_templates: set[int] = set()


def _warn_go_template(source: str) -> None:
    if hash(source) not in _warned_go_templates:
        _warned_go_templates.add(hash(source))
        log.warning("the request's template is a Go template (Ollama's format); using the model's own chat template")


def fit_context(
    tokens: np.ndarray,
    ctx_size: int,
    *,
    num_keep: int,
    num_predict: int,
    truncate: bool,
    bos: int | None = None,
) -> np.ndarray:
    """Cut a prompt that leaves no room to generate, from the front, keeping the first ``num_keep``.

    The cut leaves room for ``num_predict`` tokens (a quarter of the context when unbounded, at most
    half of it). ``num_keep`` < 0 keeps only a leading BOS token.
    """
    if len(tokens) < ctx_size:
        return tokens
    if not truncate:
        raise BadRequest(
            f"the prompt is {len(tokens)} tokens, which does not fit the context of {ctx_size} tokens"
            " (and truncate is false)"
        )
    room = num_predict if num_predict > 0 else ctx_size // 4
    target = ctx_size - max(1, min(room, ctx_size // 2))
    keep = max(num_keep, 0)
    if bos is not None and len(tokens) and tokens[0] == bos:
        keep = max(keep, 1)
    keep = min(keep, target - 1)
    return np.concatenate([tokens[:keep], tokens[len(tokens) - (target - keep) :]])


__all__ = ["CompletionRequest", "PromptBuilder", "TemplateError", "fit_context"]
