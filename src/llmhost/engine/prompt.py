"""A ``/completion`` body → validated request → prompt tokens that fit the context → a Sequence.

The prompt is rendered with the request's ``template`` (Jinja, or Ollama's Go format, see
``engine.templates.compile_template``) or else the model's own Jinja template.

Everything that can reject a request (bad fields, a failing template, an invalid schema, a prompt
that does not fit with ``truncate: false``) happens here, before the engine sees it, so such errors
are a 400 with nothing streamed.

Kept tokens (``num_keep``): what truncation of a long prompt and a context shift never drop. With
``num_keep`` ≥ 0 it is that many leading tokens; by default (-1) it is the rendered system prompt
when the request has leading system messages, else nothing — and a leading BOS is always kept.

Bounded work: a request's template renders share one ``RenderBudget`` (``engine.sandbox``), which
its handler can cancel; and a prompt text far longer than the context could hold is not tokenized
whole — only its head (for the kept tokens) and the tail a cut keeps are (see ``CHARS_PER_TOKEN``).

Images (a runner with a projector, ``engine.vision``): each becomes a marker in its message's text
(``images.place_markers``, Ollama's rule), so templates, Jinja or Go, see the text with them; the
rendered prompt is split at the markers, its text tokenized and each image turned into the
projector's pieces, its positions standing in the token array as ids derived from its content
(``images.image_token_ids``). Truncation cuts only between images, and refuses (400) a prompt that
could fit only without its last image.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from llmhost.engine.detokenizer import Detokenizer
from llmhost.engine.gotemplate import Values
from llmhost.engine.images import (
    MEDIA_MARKER,
    NO_VISION,
    ImageData,
    ImageSpan,
    decode_images,
    image_list,
    image_run_bounds,
    image_token_ids,
    place_markers,
)
from llmhost.engine.kv_host import common_prefix_len
from llmhost.engine.llamacpp import Model
from llmhost.engine.parsing import OutputParser, make_parser
from llmhost.engine.parsing.tool_calls import detect_tool_format
from llmhost.engine.parsing.tool_grammar import tool_call_grammar
from llmhost.engine.sampling import SamplingParams, build_sampler, grammar_for_format
from llmhost.engine.sandbox import RenderBudget, RenderLimits
from llmhost.engine.sequence import Sequence, Sink
from llmhost.engine.templates import (
    CHATML,
    MAX_TEMPLATE_CHARS,
    ChatTemplate,
    GoChatTemplate,
    compile_template,
    validate_messages,
)
from llmhost.engine.token_memo import TokenMemo
from llmhost.errors import BadRequest, TemplateError

if TYPE_CHECKING:  # the projector is loaded only with --mmproj
    from llmhost.engine.vision import MediaChunk, Projector


# A text of CHARS_PER_TOKEN × the context in characters nearly always holds more tokens than the
# context (a token is about 4 characters of English, fewer of most other scripts), so of a longer
# prompt only such a window at each end is tokenized (tokenizing costs ~100 bytes per character:
# a 64 MB prompt took 7.7 GB). Text of longer tokens (runs of spaces or symbols) doubles the window,
# up to MAX_CHARS_PER_TOKEN; _CUT_MARGIN more tokens than the context keep the token the window's
# edge split out of what a cut keeps.
CHARS_PER_TOKEN = 8
MAX_CHARS_PER_TOKEN = 64
_CUT_MARGIN = 64
_IMAGE_UNCUT = "and an image cannot be cut: send fewer or smaller images, or a larger num_ctx"


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
    tools: list[dict[str, Any]] = field(default_factory=list)
    think: bool | str | None = None  # None: the template has no thinking switch (nothing to split)
    tool_choice: str | dict[str, str] | None = None  # "required" or {"name": ...}: forced by a grammar
    parallel_tool_calls: bool = True
    suffix: str | None = None  # fill-in-the-middle (with ``prompt``)
    context: list[int] = field(default_factory=list)  # token ids to continue from (generate's context)
    logprobs: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    return_context: bool = False
    images: list[str] = field(default_factory=list)  # base64, in order; the text holds a marker for each

    @classmethod
    def from_json(cls, body: Any) -> CompletionRequest:
        """A received body (``api.runner_protocol.CompletionBody`` when the daemon sent it; untrusted
        JSON until checked here) → the request."""
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        messages, prompt = body.get("messages"), body.get("prompt")
        if (messages is None) == (prompt is None):
            raise BadRequest('exactly one of "messages" and "prompt" is required')
        if prompt is not None and not isinstance(prompt, str):
            raise BadRequest('"prompt" must be a string')
        template = _typed(body, "template", str, None)
        suffix = _typed(body, "suffix", str, None)
        if suffix is not None and prompt is None:
            raise BadRequest('"suffix" needs "prompt"')
        images = image_list(body.get("images"), "")
        if images and prompt is None:
            raise BadRequest('top-level "images" go with "prompt"; a chat\'s images go on its messages')
        if images and suffix is not None:
            raise BadRequest('"suffix" (fill-in-the-middle) cannot be combined with images')
        if messages is not None:
            messages, images = _with_image_markers(validate_messages(messages))
        elif images and prompt is not None:
            prompt = place_markers(prompt, len(images))
        return cls(
            messages=messages,
            prompt=prompt,
            template=template or None,
            params=SamplingParams.from_options(body.get("options")),
            grammar=grammar_for_format(body.get("format")),
            priority=_typed(body, "priority", int, 0),
            truncate=_typed(body, "truncate", bool, True),
            tools=_typed(body, "tools", list, []),
            think=_think(body.get("think")),
            tool_choice=_tool_choice(body.get("tool_choice")),
            parallel_tool_calls=_typed(body, "parallel_tool_calls", bool, True),
            suffix=suffix,
            context=_token_ids(_typed(body, "context", list, []), "context"),
            logprobs=_logprobs(body.get("logprobs")),
            logit_bias=_logit_bias(_typed(body, "logit_bias", dict, {})),
            return_context=_typed(body, "return_context", bool, False),
            images=images,
        )

    def template_variables(self) -> dict[str, Any]:
        """Variables beyond ``messages`` for the chat template: tools and the thinking switch."""
        extra: dict[str, Any] = {}
        if self.tools:
            extra["tools"] = self.tools
        if self.think is not None:  # the switches templates use: Qwen3's, Granite's, and a level
            extra["enable_thinking"] = extra["thinking"] = self.think is not False
            if isinstance(self.think, str):
                extra["reasoning_effort"] = self.think
        return extra


def _with_image_markers(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Messages as templates see them (each image a marker in the text, no ``images``), and every
    message's images in order."""
    images: list[str] = []
    out = []
    for i, message in enumerate(messages):
        own = image_list(message.get("images"), f"invalid message at index {i}: ")
        if "images" in message:
            message = {k: v for k, v in message.items() if k != "images"}
        if own:
            message["content"] = place_markers(message["content"], len(own))
            images += own
        out.append(message)
    return out, images


def _typed(body: dict, name: str, kind: type, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadRequest(f'"{name}" must be {_KIND_NAMES[kind]}')
    return value


_KIND_NAMES = {str: "a string", int: "an integer", bool: "a boolean", list: "an array", dict: "an object"}


def _think(value: Any) -> bool | str | None:
    if value is None or isinstance(value, bool) or value in ("low", "medium", "high", "max"):
        return value
    raise BadRequest('"think" must be a boolean or "low", "medium", "high"')


def _tool_choice(value: Any) -> str | dict[str, str] | None:
    if value is None or value == "required":
        return value
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return {"name": value["name"]}
    raise BadRequest('"tool_choice" must be "required" or {"name": ...}')


def _token_ids(value: list, name: str) -> list[int]:
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value):
        raise BadRequest(f'"{name}" must be an array of token ids')
    return value


def _logprobs(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 20:
        raise BadRequest('"logprobs" must be null or the number of top alternatives, 0 to 20')
    return value


def _logit_bias(value: dict) -> dict[int, float]:
    try:
        return {int(k): float(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise BadRequest('"logit_bias" must map token ids to numbers') from None


@lru_cache(maxsize=32)
def _compiled(source: str, bos_token: str, eos_token: str) -> ChatTemplate | GoChatTemplate:
    # Requests usually repeat the same few templates; compiling Jinja costs milliseconds.
    return compile_template(source, bos_token=bos_token, eos_token=eos_token)


@dataclass(frozen=True)
class Prepared:
    """A request's prompt as the engine takes it."""

    tokens: np.ndarray  # cut to fit the context
    keep: int  # leading tokens that truncation and context shift never drop
    text: str  # the rendered prompt (before any cut), for output parsers
    template: str | None  # the chat template's source (None: a raw prompt)
    images: tuple[ImageSpan, ...] = ()  # where images are in ``tokens``

    def free_images(self) -> None:
        for span in self.images:
            span.media.free()


class PromptBuilder:
    """Renders, tokenizes and fits prompts for one model and per-sequence context size."""

    def __init__(self, model: Model, ctx_size: int, limits: RenderLimits = RenderLimits(),
                 projector: Projector | None = None):
        self.model = model
        self.ctx_size = ctx_size
        self.limits = limits
        self.projector = projector  # None: requests with images are refused
        self.default_template = model.chat_template() or CHATML
        self._bos_text = model.token_text(model.bos)
        self._eos_text = model.token_text(model.eos)
        self.memo = TokenMemo(model)  # a conversation's next turn tokenizes only what it adds

    def template(self, source: str | None = None) -> ChatTemplate | GoChatTemplate:
        """The request's template (Jinja, or Ollama's Go format) when it has one, else the model's."""
        if source and len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateError(f"the chat template is {len(source)} characters, more than the limit of"
                                f" {MAX_TEMPLATE_CHARS}")
        return _compiled(source or self.default_template, self._bos_text, self._eos_text)

    def budget(self, req: CompletionRequest, cancel: threading.Event | None = None) -> RenderBudget:
        """What the renders of ``req`` may spend; its size limits grow with the text it carries."""
        return self.limits.budget({"messages": req.messages or [], "tools": req.tools}, cancel)

    def render(self, req: CompletionRequest, budget: RenderBudget | None = None) -> str:
        if req.messages is None:
            return req.prompt or ""
        return self.template(req.template).render(req.messages, add_generation_prompt=True,
                                                  budget=budget or self.budget(req), **req.template_variables())

    def tokens(self, req: CompletionRequest) -> np.ndarray:
        """Prompt tokens of a request, cut to fit the context (or BadRequest with truncate false)."""
        return self.prepare(req).tokens

    def prepare(self, req: CompletionRequest, cancel: threading.Event | None = None) -> Prepared:
        """Prompt tokens that fit the context, how many leading ones are kept (see above), the text;
        setting ``cancel`` stops a render under way."""
        if req.images and self.projector is None:
            raise BadRequest(NO_VISION)
        images = decode_images(req.images)
        budget = self.budget(req, cancel)
        go_fim = self._go_fill_in_middle(req, budget)
        text = go_fim if go_fim is not None else self.render(req, budget)
        spans: tuple[ImageSpan, ...] = ()
        if images:
            tokens, keep, spans = self._image_prompt(req, text, images, budget)
        elif req.suffix is not None and go_fim is None:
            tokens = self._fill_in_middle(text, req.suffix, req.truncate)
            keep = self._leading_bos(tokens)
        else:
            tokens, keep = self._prompt_tokens(req, text, budget)
        if req.context:
            before = len(tokens)
            tokens, keep = self._continue_from(req.context, tokens), 0
            spans = tuple(span.moved(len(tokens) - before) for span in spans)
        if spans:
            tokens, keep, spans = self._fit_images(req, tokens, keep, spans)
        else:
            tokens = fit_context(tokens, self.ctx_size, num_keep=keep, num_predict=req.params.num_predict,
                                 truncate=req.truncate, bos=self._bos)
        source = self.template(req.template).source if req.messages is not None else None
        return Prepared(tokens, min(keep, len(tokens)), text, source, spans)

    def _go_fill_in_middle(self, req: CompletionRequest, budget: RenderBudget) -> str | None:
        """A fill-in-the-middle prompt rendered by the request's Go template when it reads ``.Suffix``
        (as Ollama renders it: ``.Prompt`` and ``.Suffix``); None: the vocabulary's FIM tokens apply."""
        if not (req.suffix and req.prompt and req.template):
            return None
        template = self.template(req.template)
        if not isinstance(template, GoChatTemplate) or not template.takes_suffix:
            return None
        return template.render_values(Values(prompt=req.prompt, suffix=req.suffix, think=req.think), budget)

    def keep_tokens(self, req: CompletionRequest, tokens: np.ndarray, budget: RenderBudget | None = None) -> int:
        """Leading tokens of ``tokens`` that truncation and context shift keep."""
        leading_bos = self._leading_bos(tokens)
        if req.params.num_keep >= 0:
            return max(req.params.num_keep, leading_bos)
        system = _leading_system(req.messages or [])
        if not system:
            return leading_bos
        try:
            rendered = self.template(req.template).render(system, add_generation_prompt=False,
                                                          budget=budget or self.budget(req), **req.template_variables())
        except TemplateError:  # some templates insist on a user turn: keep what is certain
            return leading_bos
        system_tokens, _ = self._bounded_tokens(rendered, self._tokenize, tail=False)
        return max(common_prefix_len(system_tokens, tokens), leading_bos)

    def sequence(self, req: CompletionRequest, sink: Sink, cancel: threading.Event | None = None) -> Sequence | None:
        """A ready-to-submit Sequence for ``req`` (None when the prompt has no tokens at all);
        setting ``cancel`` stops a render under way."""
        prepared = self.prepare(req, cancel)
        if len(prepared.tokens) == 0:
            return None
        try:
            return self._sequence(req, prepared, sink)
        except BaseException:
            prepared.free_images()
            raise

    def _sequence(self, req: CompletionRequest, prepared: Prepared, sink: Sink) -> Sequence:
        grammar, parser = self._output_shape(req, prepared)
        text_tokens = prepared.tokens[prepared.tokens >= 0] if prepared.images else prepared.tokens
        sampler = build_sampler(self.model, req.params, grammar=grammar, n_ctx=self.ctx_size, prompt=text_tokens,
                                logit_bias=req.logit_bias or None)
        num_predict = req.params.num_predict
        return Sequence(
            prepared.tokens,
            sampler=sampler,
            detokenizer=Detokenizer(req.params.stop),
            max_tokens=num_predict if num_predict >= 0 else None,
            sink=sink,
            priority=req.priority,
            n_keep=prepared.keep,
            parser=parser,
            keep_tokens=req.return_context,
            logprobs=req.logprobs,
            images=prepared.images,
            draft=req.params.draft_num_predict,
        )

    def _output_shape(self, req: CompletionRequest, prepared: Prepared) -> tuple[str | None, OutputParser | None]:
        """The grammar that constrains the output, and the parser that splits thinking and tool calls."""
        if prepared.template is None:
            return req.grammar, None
        if req.tool_choice is None or not req.tools:
            return req.grammar, make_parser(prepared.template, prompt=prepared.text, think=req.think,
                                            tools=bool(req.tools))
        if req.grammar is not None:
            raise BadRequest('"format" cannot be combined with a "tool_choice" that forces a tool call')
        fmt = detect_tool_format(prepared.template)
        name = req.tool_choice.get("name") if isinstance(req.tool_choice, dict) else None
        grammar = tool_call_grammar(fmt, req.tools, name=name, parallel=req.parallel_tool_calls)
        # The grammar makes the call the first thing generated: there is no thinking to split off.
        return grammar, make_parser(prepared.template, prompt=prepared.text, think=None, tools=True)

    @property
    def _bos(self) -> int | None:
        return self.model.bos if self.model.add_bos else None

    def _leading_bos(self, tokens: np.ndarray) -> int:
        return int(self._bos is not None and len(tokens) > 0 and tokens[0] == self._bos)

    def _tokenize(self, text: str) -> np.ndarray:
        return self._single_bos(self.memo.tokenize(text))

    def _tokenize_part(self, text: str) -> np.ndarray:
        return self.model.tokenize(text, add_special=False, parse_special=True)

    def _tokenize_plain(self, text: str) -> np.ndarray:
        return self.model.tokenize(text, add_special=False, parse_special=False)

    def _prompt_tokens(self, req: CompletionRequest, text: str, budget: RenderBudget) -> tuple[np.ndarray, int]:
        """The prompt's tokens and how many leading ones are kept; of a text far longer than the
        context, its head's kept tokens followed by its tail's tokens (what ``fit_context`` keeps)."""
        head, n_chars = self._bounded_tokens(text, self._tokenize, tail=False)
        keep = self.keep_tokens(req, head, budget)
        if n_chars == len(text):
            return head, keep
        self._check_truncate(req.truncate, len(head))
        tail, _ = self._bounded_tokens(text, self._tokenize_part, tail=True)
        return np.concatenate([head[: max(keep, 0)], tail]), keep

    def _image_prompt(self, req: CompletionRequest, text: str, images: list[ImageData],
                      budget: RenderBudget) -> tuple[np.ndarray, int, tuple[ImageSpan, ...]]:
        """Tokens of a prompt whose text has a marker per image, how many leading ones are kept, and
        where its images are. Read from its end: what precedes a part longer than the context could
        hold is not tokenized (nor its images decoded), but for the head's kept tokens."""
        parts = text.split(MEDIA_MARKER)
        if len(parts) != len(images) + 1:
            raise BadRequest(f"the rendered prompt has {len(parts) - 1} image markers ({MEDIA_MARKER}) for "
                             f"{len(images)} images (a template that drops a message's text, or the marker in it)")
        assert self.projector is not None  # prepare() refuses images without one
        items: list[np.ndarray | MediaChunk] = []  # from the end
        total, cut = 0, False
        for i in range(len(parts) - 1, -1, -1):
            if i == 0 and len(parts[0]) <= self.ctx_size * CHARS_PER_TOKEN:
                tokens, whole = self._tokenize(parts[0]), True
            else:
                tokens, n_chars = self._bounded_tokens(parts[i], self._tokenize_part, tail=True)
                whole = n_chars == len(parts[i])
                if whole and i == 0:  # it fitted a wider window after all: the head takes the BOS rule
                    tokens = self._tokenize(parts[0])
            items.append(tokens)
            total += len(tokens)
            if not whole or (i > 0 and total > self.ctx_size + _CUT_MARGIN):
                cut = True
                break
            if i > 0:
                pieces = self.projector.pieces(images[i - 1])
                items += reversed(pieces)
                total += sum(len(p) if isinstance(p, np.ndarray) else p.n_tokens for p in pieces)
        tail, spans = _assemble(items[::-1])
        if not cut:
            return tail, self.keep_tokens(req, tail, budget), spans
        self._check_truncate(req.truncate, total)
        if not spans:  # the text after the last image alone is more than the context
            raise BadRequest(f"the prompt is more than {total} tokens after its last image, which does not fit the "
                             f"context of {self.ctx_size} tokens, {_IMAGE_UNCUT}")
        head, _ = self._bounded_tokens(parts[0], self._tokenize, tail=False)
        keep = self.keep_tokens(req, head, budget)
        return np.concatenate([head[:keep], tail]), keep, tuple(span.moved(keep) for span in spans)

    def _fit_images(self, req: CompletionRequest, tokens: np.ndarray, keep: int,
                    spans: tuple[ImageSpan, ...]) -> tuple[np.ndarray, int, tuple[ImageSpan, ...]]:
        """``fit_context`` for a prompt with images: never cut through one, nor drop the last one."""
        if len(tokens) < self.ctx_size:
            return tokens, keep, spans
        n_image = sum(span.n for span in spans)
        too_long = (f"the prompt is {len(tokens)} tokens, {n_image} of them for {len(spans)} images, which does "
                    f"not fit the context of {self.ctx_size} tokens")
        if not req.truncate:
            raise BadRequest(f"{too_long} (and truncate is false)")
        head, start = cut_points(tokens, self.ctx_size, num_keep=keep, num_predict=req.params.num_predict,
                                 bos=self._bos)
        head, start = image_run_bounds(tokens, head)[0], image_run_bounds(tokens, start)[1]
        last = spans[-1]
        if head <= last.start < start:
            raise BadRequest(f"{too_long}, {_IMAGE_UNCUT}")
        kept = []
        for span in spans:
            if span.end <= head:
                kept.append(span)
            elif span.start >= start:
                kept.append(span.moved(head - start))
            else:
                span.media.free()
        return np.concatenate([tokens[:head], tokens[start:]]), min(keep, head), tuple(kept)

    def _bounded_tokens(self, text: str, tokenize, *, tail: bool) -> tuple[np.ndarray, int]:
        """``tokenize(text)`` when the text is short enough to tokenize whole, else of the shortest
        window at its head (or ``tail``) that holds more tokens than the context; and the window's
        length in characters (the text's own when whole)."""
        window = self.ctx_size * CHARS_PER_TOKEN
        while len(text) > window:
            tokens = tokenize(text[-window:] if tail else text[:window])
            if len(tokens) > self.ctx_size + _CUT_MARGIN or window >= self.ctx_size * MAX_CHARS_PER_TOKEN:
                return tokens, window
            window *= 2
        return tokenize(text), len(text)

    def _check_truncate(self, truncate: bool, n_tokens: int) -> None:
        """BadRequest for a prompt of which ``n_tokens`` were counted (not all) with truncate false."""
        if not truncate:
            raise BadRequest(
                f"the prompt is more than {n_tokens} tokens, which does not fit the context of {self.ctx_size}"
                " tokens (and truncate is false)"
            )

    def _fill_in_middle(self, prefix: str, suffix: str, truncate: bool = True) -> np.ndarray:
        """Prefix-suffix-middle order with the vocabulary's FIM tokens (as llama-server's infill);
        of a long prefix or suffix only the tail that a cut keeps is tokenized."""
        fim = self.model.fim_tokens()
        if fim is None:
            raise BadRequest("this model has no fill-in-the-middle tokens, so it does not support insert")
        pre, suf, mid = fim
        head = [self.model.bos] if self.model.add_bos else []
        (body, n_body), (end, n_end) = (self._bounded_tokens(text, self._tokenize_plain, tail=True)
                                        for text in (prefix, suffix))
        if (n_body, n_end) != (len(prefix), len(suffix)):
            self._check_truncate(truncate, len(body) + len(end))
        return np.asarray([*head, pre, *body.tolist(), suf, *end.tolist(), mid], dtype=np.int32)

    def head_that_fits(self, text: str) -> str:
        """``text``, or of a text far longer than the context only the head a cut at the end keeps
        (for embeddings, which keep the first tokens)."""
        if len(text) <= self.ctx_size * CHARS_PER_TOKEN:
            return text
        _, n_chars = self._bounded_tokens(text, self._tokenize, tail=False)
        return text[:n_chars]

    def _continue_from(self, context: list[int], tokens: np.ndarray) -> np.ndarray:
        """``context`` (a previous answer's token ids) followed by the new prompt, one BOS in all."""
        if any(t >= self.model.n_vocab for t in context):
            raise BadRequest(f"invalid context: token ids must be below {self.model.n_vocab}")
        if self._leading_bos(tokens) and context:
            tokens = tokens[1:]
        return np.concatenate([np.asarray(context, dtype=np.int32), tokens])

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
    keep, start = cut_points(tokens, ctx_size, num_keep=num_keep, num_predict=num_predict, bos=bos)
    return np.concatenate([tokens[:keep], tokens[start:]])


def cut_points(tokens: np.ndarray, ctx_size: int, *, num_keep: int, num_predict: int,
               bos: int | None = None) -> tuple[int, int]:
    """Where ``fit_context`` cuts a prompt too long for the context: it keeps ``tokens[:keep]`` and
    ``tokens[start:]``."""
    room = num_predict if num_predict > 0 else ctx_size // 4
    target = ctx_size - max(1, min(room, ctx_size // 2))
    keep = max(num_keep, 0)
    if bos is not None and len(tokens) and tokens[0] == bos:
        keep = max(keep, 1)
    keep = min(keep, target - 1)
    return keep, len(tokens) - (target - keep)


def _assemble(items: list[np.ndarray | MediaChunk]) -> tuple[np.ndarray, tuple[ImageSpan, ...]]:
    """One token array of text tokens and images' positions, and where the images are in it."""
    arrays, spans, pos = [], [], 0
    for item in items:
        if isinstance(item, np.ndarray):
            arrays.append(item)
        else:
            arrays.append(image_token_ids(item.key, item.n_tokens))
            spans.append(ImageSpan(pos, item.n_tokens, item))
        pos += len(arrays[-1])
    return (np.concatenate(arrays) if arrays else np.zeros(0, np.int32)), tuple(spans)


__all__ = ["CompletionRequest", "PromptBuilder", "fit_context"]
