"""Per-request sampling: options → ``SamplingParams`` → a native llama.cpp sampler chain.

Order follows llama.cpp's common sampler: penalties (``engine.penalties``, applied to the logits
before the native chain), then truncation (top_k, typical, top_p, min_p), temperature and a seeded
``dist`` draw. Temperature 0 is greedy (an argmax, see ``llamacpp.Sampler``); mirostat 1/2 replace
the truncation samplers. ``format`` ("json" or a JSON schema) becomes a GBNF grammar, kept beside
the chain rather than in it (``llamacpp.Sampler`` checks only the token the chain picked). The
prompt's last ``repeat_last_n`` tokens seed the penalty history, so a reply is not free to repeat
its prompt. A request's ``logit_bias`` is llama.cpp's logit-bias sampler at the front of the chain
(after the penalties, which are applied to the logits before the chain runs); a bias of -100 or
less bans its token outright (-inf), as OpenAI documents -100.

Grammar limits: llama-cpp-python's schema converter writes every repetition out (``minLength: n``
is n copies of a rule, ``maxLength: n`` n nested optional groups; optional properties cost the cube
of their number), all of it in Python holding the GIL, and llama.cpp's grammar parser fails on more
than ~1000 nested groups and overflows its stack (a crash) at ~32000. So schemas are checked before
they are converted (``check_schema``, also for the tools of a forced call) and grammars before they
are parsed; each refusal is a 400 that names the limit.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from llmhost.api.options import DEFAULTS, RUNTIME_OPTIONS, validate_options
from llmhost.engine.llamacpp import JSON_GBNF, Model, Sampler, SamplerChain, json_schema_to_gbnf
from llmhost.engine.penalties import Penalties
from llmhost.errors import BadRequest, InvalidOption


@dataclass(frozen=True)
class SamplingParams:
    """Runtime options of one request, with Ollama's defaults filled in."""

    num_keep: int = DEFAULTS["num_keep"]
    seed: int = DEFAULTS["seed"]
    num_predict: int = DEFAULTS["num_predict"]
    top_k: int = DEFAULTS["top_k"]
    top_p: float = DEFAULTS["top_p"]
    min_p: float = DEFAULTS["min_p"]
    typical_p: float = DEFAULTS["typical_p"]
    repeat_last_n: int = DEFAULTS["repeat_last_n"]
    temperature: float = DEFAULTS["temperature"]
    repeat_penalty: float = DEFAULTS["repeat_penalty"]
    presence_penalty: float = DEFAULTS["presence_penalty"]
    frequency_penalty: float = DEFAULTS["frequency_penalty"]
    mirostat: int = DEFAULTS["mirostat"]
    mirostat_tau: float = DEFAULTS["mirostat_tau"]
    mirostat_eta: float = DEFAULTS["mirostat_eta"]
    stop: tuple[str, ...] = field(default_factory=tuple)
    draft_num_predict: int = DEFAULTS["draft_num_predict"]  # not sampling: speculation's draft length

    @classmethod
    def from_options(cls, options: Any) -> SamplingParams:
        """Validate a request's ``options`` (load-time keys are ignored here) and fill defaults."""
        checked = validate_options(options)
        runtime = {k: v for k, v in checked.items() if k in RUNTIME_OPTIONS}
        if "stop" in runtime:
            runtime["stop"] = tuple(runtime["stop"])
        params = cls(**runtime)
        params._check_ranges()
        return params

    def _check_ranges(self) -> None:
        if self.mirostat not in (0, 1, 2):
            raise InvalidOption('option "mirostat" must be 0, 1 or 2')
        if self.temperature < 0:
            raise InvalidOption('option "temperature" must not be negative')
        if self.repeat_penalty <= 0:
            raise InvalidOption('option "repeat_penalty" must be greater than 0')


RUNTIME_FIELDS = frozenset(f.name for f in fields(SamplingParams))
assert set(RUNTIME_OPTIONS) == RUNTIME_FIELDS, "SamplingParams must mirror api.options.RUNTIME_OPTIONS"


MAX_SCHEMA_REPETITION = 1000  # one minLength/maxLength/minItems/maxItems or {m,n} of a pattern
MAX_SCHEMA_REPETITIONS = 20_000  # all of them in one schema
MAX_SCHEMA_DEPTH = 64  # JSON nesting (about half as many levels of nested objects)
MAX_SCHEMA_CHARS = 1 << 20  # about, as JSON
MAX_SCHEMA_PROPERTIES = 5000  # in all (OpenAI's limit for structured outputs)
MAX_OPTIONAL_PROPERTIES = 64  # of one object (~3 ms to convert; 900 took 1.5 s)
MAX_GRAMMAR_CHARS = 1 << 20  # GBNF text (llama.cpp parses 1 MiB in ~0.15 s)

_REPETITION_KEYS = ("minLength", "maxLength", "minItems", "maxItems")
_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")


def check_schema(schema: Any, what: str = "format") -> None:
    """BadRequest naming the limit when a JSON schema is too large, too deep or repeats too much to
    become a grammar (limits above); ``what`` says where the schema came from, for the message."""
    stack, size, repetitions, properties = [(schema, 1)], 0, 0, 0
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise BadRequest(f"the JSON schema in {what} is nested more than {MAX_SCHEMA_DEPTH} levels deep")
        if isinstance(node, dict):
            repetitions += _repetitions(node, what)
            properties += _properties(node, what)
            size += sum(len(key) + 4 for key in node)
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            size += 2 * len(node) + 2
            stack.extend((value, depth + 1) for value in node)
        else:
            size += len(node) + 2 if isinstance(node, str) else 8
        if size > MAX_SCHEMA_CHARS:
            raise BadRequest(f"the JSON schema in {what} is larger than the limit of {MAX_SCHEMA_CHARS} characters")
    if repetitions > MAX_SCHEMA_REPETITIONS:
        raise BadRequest(f"the JSON schema in {what} repeats {repetitions} times in all (lengths, item counts,"
                         f" pattern counts), more than the limit of {MAX_SCHEMA_REPETITIONS}")
    if properties > MAX_SCHEMA_PROPERTIES:
        raise BadRequest(f"the JSON schema in {what} has {properties} properties, more than the limit"
                         f" of {MAX_SCHEMA_PROPERTIES}")


def _repetitions(node: dict, what: str) -> int:
    """The repetition counts one schema node asks for, each checked against the limit."""
    counts = [(key, node[key]) for key in _REPETITION_KEYS if _is_number(node.get(key))]
    pattern = node.get("pattern")
    if isinstance(pattern, str):
        counts += [("pattern", int(n)) for pair in _QUANTIFIER.findall(pattern) for n in pair if n]
    for key, count in counts:
        if count > MAX_SCHEMA_REPETITION:
            raise BadRequest(f'"{key}" of {int(count)} in the JSON schema in {what} is more than the limit'
                             f" of {MAX_SCHEMA_REPETITION}")
    return int(sum(max(count, 0) for _, count in counts))


def _properties(node: dict, what: str) -> int:
    properties = node.get("properties")
    if not isinstance(properties, dict):
        return 0
    required = node.get("required")
    required = required if isinstance(required, list) else []
    optional = len(properties.keys() - {r for r in required if isinstance(r, str)})
    if optional > MAX_OPTIONAL_PROPERTIES:
        raise BadRequest(f"an object in the JSON schema in {what} has {optional} optional properties,"
                         f" more than the limit of {MAX_OPTIONAL_PROPERTIES}")
    return len(properties)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def grammar_for_format(fmt: Any) -> str | None:
    """The GBNF grammar for a request's ``format``: None, "json" or a JSON-schema object."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return JSON_GBNF
    if isinstance(fmt, dict):
        check_schema(fmt)
        try:
            return json_schema_to_gbnf(json.dumps(fmt))
        except Exception as e:  # the converter raises ValueError, KeyError, … on bad schemas
            raise BadRequest(f"invalid JSON schema in format: {e}") from None
    raise BadRequest('"format" must be "json" or a JSON schema object')


BAN = -100.0  # a logit bias at or below this bans its token (OpenAI's "-100 should ban")


def build_sampler(
    model: Model,
    params: SamplingParams,
    *,
    grammar: str | None,
    n_ctx: int,
    prompt: np.ndarray | None = None,
    logit_bias: dict[int, float] | None = None,
) -> Sampler:
    """A fresh sampler for one sequence (the caller closes it when the sequence ends); ``prompt``
    tokens seed the penalty history; ``logit_bias`` maps token ids to a bias added to their logits."""
    biases = check_logit_bias(logit_bias, model.n_vocab)
    chain = SamplerChain()
    grammar_chain = None
    window = penalty_window(params, n_ctx)
    penalties = (Penalties(window, params.repeat_penalty, params.frequency_penalty, params.presence_penalty)
                 if window else None)
    try:
        if biases:
            chain.add_logit_bias(model.n_vocab, biases)
        _add_selection(chain, model, params)
        if grammar is not None:
            _check_grammar(grammar)
            grammar_chain = SamplerChain()
            try:
                grammar_chain.add_grammar(model, grammar)
            except ValueError as e:
                raise BadRequest(f"invalid grammar for format: {e}") from None
    except BaseException:
        chain.close()
        if grammar_chain is not None:
            grammar_chain.close()
        raise
    # The greedy shortcut takes the argmax of the row itself, which would skip the bias in the chain.
    sampler = Sampler(chain, grammar_chain, n_vocab=model.n_vocab, penalties=penalties,
                      greedy=params.temperature == 0 and not biases)
    if window and prompt is not None and len(prompt):
        sampler.accept_history(prompt[-window:])
    return sampler


def _check_grammar(grammar: str) -> None:
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise BadRequest(f"the grammar for this request's format or tools is {len(grammar)} characters, more"
                         f" than the limit of {MAX_GRAMMAR_CHARS}")


def check_logit_bias(logit_bias: dict[int, float] | None, n_vocab: int) -> list[tuple[int, float]]:
    """``logit_bias`` as (token, bias) pairs for llama.cpp, bans as -inf; BadRequest for a token id
    outside the vocabulary or a bias that is not a number."""
    biases = []
    for token, bias in (logit_bias or {}).items():
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < n_vocab:
            raise BadRequest(f"invalid token id {token} in logit_bias: the model's token ids are 0 to {n_vocab - 1}")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or math.isnan(bias) or bias == math.inf:
            raise BadRequest(f"invalid bias {bias} for token {token} in logit_bias: it must be a number")
        biases.append((token, -math.inf if bias <= BAN else float(bias)))
    return biases


def penalty_window(p: SamplingParams, n_ctx: int) -> int:
    """Tokens of history the repetition penalties look at (0: no penalty sampler at all)."""
    last_n = n_ctx if p.repeat_last_n < 0 else p.repeat_last_n
    neutral = p.repeat_penalty == 1.0 and p.frequency_penalty == 0.0 and p.presence_penalty == 0.0
    return 0 if neutral else last_n


def _add_selection(chain: SamplerChain, model: Model, p: SamplingParams) -> None:
    if p.temperature == 0:
        chain.add_greedy()
        return
    if p.mirostat == 1:
        chain.add_temperature(p.temperature).add_mirostat(model.n_vocab, p.seed, p.mirostat_tau, p.mirostat_eta)
        return
    if p.mirostat == 2:
        chain.add_temperature(p.temperature).add_mirostat_v2(p.seed, p.mirostat_tau, p.mirostat_eta)
        return
    # Neutral values are skipped: each sampler costs a pass over the candidates.
    if p.top_k > 0:
        chain.add_top_k(p.top_k)
    if 0 < p.typical_p < 1:
        chain.add_typical(p.typical_p)
    if 0 < p.top_p < 1:
        chain.add_top_p(p.top_p)
    if p.min_p > 0:
        chain.add_min_p(p.min_p)
    chain.add_temperature(p.temperature).add_dist(p.seed)
