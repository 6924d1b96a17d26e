"""A ``Sequence``: one completion request as the engine sees it, and the outputs it streams.

The engine thread owns every field except ``cancelled``, which the request's asyncio side sets
(a bool store is atomic under the GIL; the engine notices it at its next step).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np

from llmhost.api.runner_protocol import FinalLine
from llmhost.engine.detokenizer import Detokenizer
from llmhost.engine.images import ImageSpan
from llmhost.engine.kv_host import SwapRecord
from llmhost.engine.llamacpp import Sampler
from llmhost.engine.parsing import OutputParser
from llmhost.engine.speculation import DraftPolicy, History


class SeqStatus(Enum):
    WAITING = "waiting"  # queued, no KV slot yet
    RUNNING = "running"  # holds a slot: prefilling or generating
    SWAPPED = "swapped"  # queued again, its KV cells saved in host memory (``Sequence.swap``)
    FINISHED = "finished"


class FinishReason(str, Enum):
    STOP = "stop"  # end-of-generation token or a stop string
    LENGTH = "length"  # num_predict reached or the context is full
    CANCELLED = "cancelled"  # the client went away
    ERROR = "error"  # decode failed or the runner is shutting down


@dataclass(frozen=True)
class TextChunk:
    """Released text of one step (never half a character, never part of a stop string)."""

    text: str


@dataclass(frozen=True)
class ThinkingChunk:
    """Released text of the model's reasoning (split from the answer by the sequence's parser)."""

    text: str


@dataclass(frozen=True)
class ToolCallsChunk:
    """Tool calls parsed whole from the output: ``[{"function": {"name", "arguments": {...}}}]``."""

    calls: tuple[dict, ...]


@dataclass(frozen=True)
class Finished:
    """The final line of a completion; durations in nanoseconds."""

    done_reason: FinishReason
    prompt_eval_count: int  # prompt tokens actually evaluated (not reused from the KV cache)
    prompt_cached_count: int  # prompt tokens reused from the KV cache
    prompt_eval_duration: int
    eval_count: int  # generated tokens
    eval_duration: int
    context: tuple[int, ...] | None = None  # prompt + generated token ids, when the request asked

    def to_json(self) -> FinalLine:
        out: FinalLine = {
            "done": True, "done_reason": self.done_reason.value,
            "prompt_eval_count": self.prompt_eval_count, "prompt_cached_count": self.prompt_cached_count,
            "prompt_eval_duration": self.prompt_eval_duration, "eval_count": self.eval_count,
            "eval_duration": self.eval_duration,
        }
        if self.context is not None:
            out["context"] = list(self.context)
        return out


@dataclass(frozen=True)
class Failed:
    """The sequence ended with an error (after it was accepted)."""

    message: str


@dataclass(frozen=True)
class TokenLogprobs:
    """Log-probabilities of one generated token under the model's own distribution (the raw logits,
    before any sampling option changed them): the token's, and the likeliest tokens, best first."""

    token: str  # the token's text (UTF-8; bytes that are not whole characters become U+FFFD)
    logprob: float
    piece: bytes  # the token's exact bytes
    top: tuple[tuple[str, float, bytes], ...] = ()  # (token, logprob, piece); empty when none were asked

    def to_json(self) -> list[dict]:
        """Ollama's ``logprobs`` entries for this token (one)."""
        entry = self._entry(self.token, self.logprob, self.piece)
        if self.top:
            entry["top_logprobs"] = [self._entry(*alternative) for alternative in self.top]
        return [entry]

    @staticmethod
    def _entry(token: str, logprob: float, piece: bytes) -> dict:
        entry: dict = {"token": token, "logprob": logprob}
        if piece:  # Ollama omits empty bytes
            entry["bytes"] = list(piece)
        return entry


Output = TextChunk | ThinkingChunk | ToolCallsChunk | Finished | Failed | TokenLogprobs
Sink = Callable[[Output], None]
_ids = itertools.count(1)


class Sequence:
    """Prompt, sampler, detokenizer, stop criteria, KV position and counters of one request."""

    def __init__(
        self,
        prompt: np.ndarray,
        *,
        sampler: Sampler,
        detokenizer: Detokenizer,
        max_tokens: int | None,
        sink: Sink,
        priority: int = 0,
        n_keep: int = 0,
        parser: OutputParser | None = None,
        keep_tokens: bool = False,
        logprobs: int | None = None,
        images: tuple[ImageSpan, ...] = (),
        draft: int = 0,
    ):
        """``draft``: most draft tokens per step for speculative decoding (``engine.speculation``);
        0: none."""
        if len(prompt) == 0:
            raise ValueError("a sequence needs at least one prompt token")
        self.id = next(_ids)
        self.prompt = np.asarray(prompt, dtype=np.int32)
        self.images = images  # where the prompt's image positions are (ordered); their ids are < -1
        self.sampler = sampler
        self.detokenizer = detokenizer
        self.max_tokens = max_tokens  # None: until end-of-generation or a full context
        self.priority = priority
        self.n_keep = n_keep  # leading tokens a context shift never drops (see prompt.keep_tokens)
        self.sink = sink
        self.parser = parser  # splits thinking and tool calls from the answer (None: plain text)
        self.generated: list[int] | None = [] if keep_tokens else None  # for ``context`` in the result
        self.logprobs = logprobs  # None: off; N (0-20): each token's logprob and its N likeliest alternatives
        # Drafting needs the whole history to look in; a sequence that reports log-probabilities does
        # not draft (its rows' log-probabilities would go out before the verdict on them).
        self.drafting = DraftPolicy(draft) if draft > 0 and logprobs is None else None
        self.history = History(self.prompt) if self.drafting is not None else None
        self.status = SeqStatus.WAITING
        self.cancelled = False
        self.slot: int | None = None  # KV sequence id while RUNNING
        self.swap: SwapRecord | None = None  # the saved KV cells while SWAPPED
        self.n_cached = 0  # prompt tokens reused from the cache at admission
        self.n_past = 0  # tokens of this sequence present in the KV cache
        self.next_token: int | None = None  # last sampled token, to be decoded next step
        self.n_generated = 0
        self.arrival = time.perf_counter_ns()
        self.t_prefill = 0  # first step that evaluated prompt tokens
        self.t_first_token = 0
        self.t_end = 0

    @property
    def held_slot(self) -> int:
        """The KV sequence id of a RUNNING sequence (the scheduler gives it one on admission)."""
        assert self.slot is not None, f"{self!r} holds no KV slot"
        return self.slot

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.prompt)

    def pending_prompt(self, limit: int) -> np.ndarray:
        """Up to ``limit`` prompt tokens not evaluated yet."""
        return self.prompt[self.n_past : self.n_past + limit]

    def image_at(self, pos: int) -> ImageSpan | None:
        """The image span holding prompt position ``pos``, if any."""
        for span in self.images:
            if span.start <= pos < span.end:
                return span
        return None

    def next_image(self, pos: int) -> int:
        """Where the first image at or after ``pos`` starts (the prompt's end when none does)."""
        return next((span.start for span in self.images if span.start >= pos), len(self.prompt))

    def resumable(self, n: int) -> int:
        """The most of ``n`` cached prompt positions that can be continued from: not inside an image
        decoded non-causally (its rows attend to each other, so it is decoded whole)."""
        span = self.image_at(n)
        return span.start if span is not None and span.start < n and span.media.non_causal else n

    def release_images(self, upto: int) -> None:
        """Free what images ending at or before position ``upto`` held (their KV is in place)."""
        for span in self.images:
            if span.end <= upto:
                span.media.free()
                span.media.rows = None

    def emit(self, output: Output) -> None:
        self.sink(output)

    def result(self, reason: FinishReason) -> Finished:
        """The final line, with durations measured on the engine thread."""
        end = self.t_end or time.perf_counter_ns()
        first = self.t_first_token or end
        start = self.t_prefill or first
        return Finished(
            done_reason=reason,
            prompt_eval_count=len(self.prompt) - self.n_cached,
            prompt_cached_count=self.n_cached,
            prompt_eval_duration=first - start,
            eval_count=self.n_generated,
            eval_duration=end - first,
            # Image positions have no token ids to give back: the context is the text's tokens.
            context=None if self.generated is None else (*self.prompt[self.prompt >= 0].tolist(), *self.generated),
        )

    def close(self) -> None:
        """Free the native sampler chain and what its images still hold (the sequence is done)."""
        self.status = SeqStatus.FINISHED
        self.sampler.close()
        self.release_images(len(self.prompt))

    def __repr__(self) -> str:
        return f"Sequence(id={self.id}, status={self.status.value}, slot={self.slot}, n_past={self.n_past})"
