"""Output processing: a sampled token → streamed text and the stop decision for its sequence."""

from __future__ import annotations

import time

from llmhost.engine.llamacpp import Model
from llmhost.engine.parsing import Parsed
from llmhost.engine.sequence import Finished, FinishReason, Sequence, TextChunk, ThinkingChunk, ToolCallsChunk


class OutputProcessor:
    """Applies stop criteria in order: num_predict, end-of-generation token, stop string (a full
    context is the engine's call: it shifts the context or ends the sequence)."""

    def __init__(self, model: Model):
        self.model = model

    def on_token(self, seq: Sequence, token: int) -> FinishReason | None:
        """Handle a freshly sampled token; returns why the sequence ends, or None to continue."""
        if not seq.t_first_token:
            seq.t_first_token = time.perf_counter_ns()
        if seq.max_tokens is not None and seq.n_generated >= seq.max_tokens:
            return FinishReason.LENGTH  # only reachable with num_predict 0: the token is dropped
        if self.model.is_eog(token):
            return FinishReason.STOP
        seq.n_generated += 1
        if seq.generated is not None:
            seq.generated.append(token)
        # A parser looks for markers that may be control tokens ([TOOL_CALLS]): give it their text.
        piece = self.model.piece(token) if seq.parser is None else self.model.special_piece(token)
        text = seq.detokenizer.push(piece)
        if text:
            _emit_text(seq, text)
        if seq.detokenizer.stopped:
            return FinishReason.STOP
        if seq.max_tokens is not None and seq.n_generated >= seq.max_tokens:
            return FinishReason.LENGTH
        seq.next_token = token
        if seq.history is not None:
            seq.history.append(token)
        return None

    def finish(self, seq: Sequence, reason: FinishReason) -> Finished:
        """Release held-back text (unless cancelled) and emit the final line."""
        seq.t_end = time.perf_counter_ns()
        if reason in (FinishReason.STOP, FinishReason.LENGTH):
            tail = seq.detokenizer.finish()
            if tail:
                _emit_text(seq, tail)
            if seq.parser is not None:
                _emit_parsed(seq, seq.parser.finish())
        result = seq.result(reason)
        seq.emit(result)
        return result


def _emit_text(seq: Sequence, text: str) -> None:
    if seq.parser is None:
        seq.emit(TextChunk(text))
    else:
        _emit_parsed(seq, seq.parser.feed(text))


def _emit_parsed(seq: Sequence, parsed: Parsed) -> None:
    # Thinking comes before the answer it led to, and a call after the text that introduced it.
    if parsed.thinking:
        seq.emit(ThinkingChunk(parsed.thinking))
    if parsed.content:
        seq.emit(TextChunk(parsed.content))
    if parsed.tool_calls:
        seq.emit(ToolCallsChunk(tuple(parsed.tool_calls)))
