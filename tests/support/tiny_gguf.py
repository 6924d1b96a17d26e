"""A tiny random-weight ``llama`` GGUF for fast tests.

The file borrows SmolLM2's tokenizer (vocabulary, merges, special ids) and chat template from the
real model, so prompts tokenize and render exactly as they would with SmolLM2, while the network is
2 layers of width 64 in float32: it loads in milliseconds and produces meaningless but deterministic
text. Weights come from a fixed numpy seed, so two files written with the same arguments are equal.

Use ``write_tiny_llama(path, source=smollm2_path)`` directly, or the session fixture ``tiny_model``
(``tests/support/fixtures.py``).

Without the real model, ``write_tiny_llama(path, tokenizer=byte_tokenizer())`` writes a file that
still loads and runs: a byte-level vocabulary of its own (every UTF-8 byte is a token, plus ChatML's
special tokens) and SmolLM2's chat template. Tests of the daemon, its routes and its runner
processes use that one (``tiny_gguf`` in tests/daemon/conftest.py); tests of tokenization and
prompts keep SmolLM2's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from tests.support.models import SMOLLM2

# Fields copied verbatim from the source model: everything llama.cpp needs to build the tokenizer.
_TOKENIZER_FIELDS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix",
)
_CHAT_TEMPLATE = "tokenizer.chat_template"
KEEP_TEMPLATE = object()  # sentinel: copy the source model's chat template


@dataclass(frozen=True)
class TinyShape:
    """Hyper-parameters of the tiny network (defaults: 2 layers, width 64)."""

    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx_train: int = 2048


@dataclass(frozen=True)
class _Field:
    value: Any
    kind: GGUFValueType
    sub_kind: GGUFValueType | None = None


def read_tokenizer(source: Path = SMOLLM2) -> dict[str, _Field]:
    """The tokenizer fields (and chat template) of ``source``, keyed by GGUF name."""
    reader = GGUFReader(source)
    found: dict[str, _Field] = {}
    for name in (*_TOKENIZER_FIELDS, _CHAT_TEMPLATE):
        field = reader.fields.get(name)
        if field is None:
            continue
        sub_kind = field.types[1] if len(field.types) > 1 else None
        found[name] = _Field(field.contents(), field.types[0], sub_kind)
    return found


def write_tiny_llama(
    path: Path,
    *,
    source: Path = SMOLLM2,
    shape: TinyShape = TinyShape(),
    seed: int = 0,
    chat_template: Any = KEEP_TEMPLATE,
    tokenizer: dict[str, _Field] | None = None,
) -> Path:
    """Write the tiny model to ``path`` and return it.

    ``chat_template``: KEEP_TEMPLATE copies the source's, None leaves the file without one (to test
    the fallback), a string replaces it. ``tokenizer`` lets callers reuse ``read_tokenizer()``'s
    result when writing several variants (reading 49k tokens takes a moment).
    """
    fields = dict(tokenizer if tokenizer is not None else read_tokenizer(source))
    if chat_template is not KEEP_TEMPLATE:
        fields.pop(_CHAT_TEMPLATE, None)
    n_vocab = len(fields["tokenizer.ggml.tokens"].value)
    writer = GGUFWriter(str(path), "llama")
    _add_hparams(writer, shape, n_vocab)
    for name, field in fields.items():
        writer.add_key_value(name, field.value, field.kind, sub_type=field.sub_kind)
    if isinstance(chat_template, str):
        writer.add_chat_template(chat_template)
    _write(writer, _tensors(shape, n_vocab, seed))
    return path


def _write(writer: GGUFWriter, tensors) -> None:
    """Add the ``(name, array)`` tensors and write the file out."""
    for name, tensor in tensors:
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_hparams(writer: GGUFWriter, shape: TinyShape, n_vocab: int) -> None:
    writer.add_name("tiny-llama-test")
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.n_embd // shape.n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(0)  # ALL_F32


def _tensors(shape: TinyShape, n_vocab: int, seed: int):
    """(name, array) pairs; numpy shapes are (rows, cols) = GGUF's dims reversed."""
    rng = np.random.default_rng(seed)
    d, head_dim = shape.n_embd, shape.n_embd // shape.n_head
    d_kv = head_dim * shape.n_head_kv

    def weight(*dims: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(dims) * scale).astype(np.float32)

    # A large embedding/output scale makes the logits peaky, so greedy decoding does not collapse
    # onto one token and different prompts give visibly different continuations.
    yield "token_embd.weight", weight(n_vocab, d, scale=1.0)
    for i in range(shape.n_layer):
        yield f"blk.{i}.attn_norm.weight", np.ones(d, dtype=np.float32)
        yield f"blk.{i}.attn_q.weight", weight(d, d)
        yield f"blk.{i}.attn_k.weight", weight(d_kv, d)
        yield f"blk.{i}.attn_v.weight", weight(d_kv, d)
        yield f"blk.{i}.attn_output.weight", weight(d, d)
        yield f"blk.{i}.ffn_norm.weight", np.ones(d, dtype=np.float32)
        yield f"blk.{i}.ffn_gate.weight", weight(shape.n_ff, d)
        yield f"blk.{i}.ffn_up.weight", weight(shape.n_ff, d)
        yield f"blk.{i}.ffn_down.weight", weight(d, shape.n_ff)
    yield "output_norm.weight", np.ones(d, dtype=np.float32)
    yield "output.weight", weight(n_vocab, d, scale=1.0)


# A made-up vocabulary for tests that read metadata rather than run the model.
SMALL_VOCAB = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"t{i}" for i in range(29)))
_TOKEN_CONTROL = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL
_KINDS = {bool: GGUFValueType.BOOL, int: GGUFValueType.UINT32, float: GGUFValueType.FLOAT32,
          str: GGUFValueType.STRING}


def small_tokenizer(tokens: tuple[str, ...] = SMALL_VOCAB) -> dict[str, _Field]:
    """Tokenizer fields for ``tokens`` with no merges: enough for metadata, not loadable by llama.cpp."""
    return {
        "tokenizer.ggml.model": _Field("gpt2", GGUFValueType.STRING),
        "tokenizer.ggml.tokens": _Field(list(tokens), GGUFValueType.ARRAY, GGUFValueType.STRING),
        "tokenizer.ggml.token_type": _Field([1] * len(tokens), GGUFValueType.ARRAY, GGUFValueType.INT32),
    }


def tokenizer_with(
    tokenizer: dict[str, _Field], *, extra_tokens: tuple[str, ...] = (), metadata: dict[str, Any] | None = None
) -> dict[str, _Field]:
    """``tokenizer`` (``read_tokenizer()`` or ``small_tokenizer()``) with ``extra_tokens`` appended as
    control tokens and ``metadata`` keys added (bool, int as uint32, float, str); pass the result as
    ``write_tiny_llama(..., tokenizer=...)``. The input is not changed."""
    fields = dict(tokenizer)
    if extra_tokens:
        for name, extra in (("tokenizer.ggml.tokens", list(extra_tokens)),
                            ("tokenizer.ggml.token_type", [_TOKEN_CONTROL] * len(extra_tokens)),
                            ("tokenizer.ggml.scores", [0.0] * len(extra_tokens))):
            if name in fields:
                old = fields[name]
                fields[name] = _Field(list(old.value) + extra, old.kind, old.sub_kind)
    for name, value in (metadata or {}).items():
        fields[name] = _Field(value, _KINDS[type(value)])
    return fields


# ---- a tokenizer of its own: a tiny model that loads without SmolLM2 ----------------------------------

# SmolLM2's own chat template (ChatML with a default system turn), for files written without it.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2


def _byte_symbols() -> list[str]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[byte] for byte in range(256)]


def byte_tokenizer() -> dict[str, _Field]:
    """A loadable ``gpt2`` tokenizer that needs no source model: ChatML's specials (BOS ``<|im_start|>``,
    EOS ``<|im_end|>`` as in SmolLM2), then one token per byte, so any text tokenizes (a token per
    UTF-8 byte), and the one merge a GGUF array needs (two spaces); with SmolLM2's chat template.
    260 tokens: the file is ~0.4 MB."""
    space = _byte_symbols()[ord(" ")]
    tokens = [*CHATML_SPECIALS, *_byte_symbols(), space * 2]
    return {
        "tokenizer.ggml.model": _Field("gpt2", GGUFValueType.STRING),
        "tokenizer.ggml.pre": _Field("default", GGUFValueType.STRING),
        "tokenizer.ggml.tokens": _Field(tokens, GGUFValueType.ARRAY, GGUFValueType.STRING),
        "tokenizer.ggml.token_type": _Field([_TOKEN_CONTROL] * len(CHATML_SPECIALS) + [1] * 257,
                                            GGUFValueType.ARRAY, GGUFValueType.INT32),
        "tokenizer.ggml.merges": _Field([f"{space} {space}"], GGUFValueType.ARRAY, GGUFValueType.STRING),
        "tokenizer.ggml.bos_token_id": _Field(1, GGUFValueType.UINT32),
        "tokenizer.ggml.eos_token_id": _Field(2, GGUFValueType.UINT32),
        "tokenizer.ggml.padding_token_id": _Field(2, GGUFValueType.UINT32),
        "tokenizer.ggml.add_bos_token": _Field(False, GGUFValueType.BOOL),
        _CHAT_TEMPLATE: _Field(SMOLLM2_CHAT_TEMPLATE, GGUFValueType.STRING),
    }


# ---- crafted files: raw bytes for what GGUFWriter cannot write (nested arrays) or is slow at --------


def raw_gguf(*kvs: bytes, tensor_count: int = 0) -> bytes:
    """A little-endian GGUF v3 of these key/value records (``raw_kv`` and friends), no tensor infos.

    ``tensor_count`` only changes the header (to make a file that declares tensors it lacks)."""
    return b"GGUF" + struct.pack("<IQQ", 3, tensor_count, len(kvs)) + b"".join(kvs)


def raw_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def raw_kv(key: str, kind: GGUFValueType, payload: bytes) -> bytes:
    """One key/value record: ``payload`` is the value's bytes as GGUF lays them out."""
    return raw_string(key) + struct.pack("<I", kind) + payload


def raw_string_array(key: str, items: list[str]) -> bytes:
    body = b"".join(raw_string(item) for item in items)
    return raw_kv(key, GGUFValueType.ARRAY, struct.pack("<IQ", GGUFValueType.STRING, len(items)) + body)


def raw_nested_array(key: str, depth: int) -> bytes:
    """An array of arrays ``depth`` levels deep, the innermost one empty (of uint8)."""
    levels = struct.pack("<IQ", GGUFValueType.ARRAY, 1) * (depth - 1)
    return raw_kv(key, GGUFValueType.ARRAY, levels + struct.pack("<IQ", GGUFValueType.UINT8, 0))


# ---- a tiny reranker: BERT with a classification head --------------------------------------------

RANK_POOLING = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK (MEAN is 1, CLS 2)
_WORD_START = "\u2581"  # llama.cpp's WordPiece marks word-initial pieces with it (HF's "##" turned round)
_RERANK_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_RERANK_WORDS = ("what", "is", "a", "panda", "bear", "the", "giant", "hi", "it", "china", "paris", "capital",
                 "of", "france", "machine", "learning")


def reranker_vocabulary() -> list[str]:
    """WordPiece tokens that spell any lowercase ASCII text: specials, a few whole words, and every
    letter, digit and punctuation mark both word-initial and as a continuation."""
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces = [_WORD_START + c for c in chars + "?.,!:'-"] + list(chars) + [_WORD_START + w for w in _RERANK_WORDS]
    return list(dict.fromkeys((*_RERANK_SPECIALS, *pieces)))


def write_tiny_reranker(path: Path, *, seed: int = 0, pooling: int = RANK_POOLING, head: bool = True,
                        rerank_template: str | None = None, n_embd: int = 32, n_layer: int = 2,
                        n_ctx_train: int = 512) -> Path:
    """A ``bert`` GGUF scoring (query, document) pairs, with its own small WordPiece vocabulary (no
    source model needed), ~100 KB in float32 and deterministic for a ``seed``.

    What llama.cpp's BERT loader requires (token, type and position embeddings, their norm, per
    block q/k/v/output with biases, the attention-output and layer-output norms, ffn up/down) plus
    the classifier it applies under RANK pooling: ``cls`` (dense + tanh) and ``cls.output`` (one
    label). The vocabulary's BOS is [CLS] and EOS and SEP are [SEP], all added, so a pair is laid out
    ``[CLS] q [SEP] [SEP] d [SEP]`` (RoBERTa's form, as bge-reranker has it). ``pooling`` 1 (MEAN)
    with ``head=False`` makes a plain embedding model; ``rerank_template`` adds a
    ``tokenizer.chat_template.rerank`` prompt with ``{query}`` and ``{document}``.
    """
    tokens = reranker_vocabulary()
    n_ff, n_head = 2 * n_embd, 2
    writer = GGUFWriter(str(path), "bert")
    writer.add_name("tiny-reranker-test")
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_uint32("bert.pooling_type", pooling)
    writer.add_file_type(0)  # ALL_F32
    _add_wordpiece(writer, tokens)
    if rerank_template is not None:
        writer.add_string("tokenizer.chat_template.rerank", rerank_template)
    _write(writer, _bert_tensors(len(tokens), n_embd, n_ff, n_layer, n_ctx_train, head, seed))
    return path


def _add_wordpiece(writer: GGUFWriter, tokens: list[str]) -> None:
    ids = {token: i for i, token in enumerate(tokens)}
    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types([_TOKEN_CONTROL if t in _RERANK_SPECIALS else 1 for t in tokens])
    writer.add_token_type_count(2)
    writer.add_bos_token_id(ids["[CLS]"])
    writer.add_eos_token_id(ids["[SEP]"])
    writer.add_sep_token_id(ids["[SEP]"])
    writer.add_pad_token_id(ids["[PAD]"])
    writer.add_unk_token_id(ids["[UNK]"])
    writer.add_mask_token_id(ids["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(True)
    writer.add_add_sep_token(True)


def _bert_tensors(n_vocab: int, d: int, n_ff: int, n_layer: int, n_ctx: int, head: bool, seed: int):
    rng = np.random.default_rng(seed)

    def weight(*dims: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(dims) * scale).astype(np.float32)

    def norm(prefix: str):
        yield f"{prefix}.weight", np.ones(d, dtype=np.float32)
        yield f"{prefix}.bias", np.zeros(d, dtype=np.float32)

    yield "token_embd.weight", weight(n_vocab, d, scale=1.0)
    yield "token_types.weight", weight(2, d)
    yield "position_embd.weight", weight(n_ctx, d)
    yield from norm("token_embd_norm")
    for i in range(n_layer):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            yield f"blk.{i}.{part}.weight", weight(d, d)
            yield f"blk.{i}.{part}.bias", weight(d)
        yield from norm(f"blk.{i}.attn_output_norm")
        yield f"blk.{i}.ffn_up.weight", weight(n_ff, d)
        yield f"blk.{i}.ffn_up.bias", weight(n_ff)
        yield f"blk.{i}.ffn_down.weight", weight(d, n_ff)
        yield f"blk.{i}.ffn_down.bias", weight(d)
        yield from norm(f"blk.{i}.layer_output_norm")
    if head:
        yield "cls.weight", weight(d, d, scale=0.5)
        yield "cls.bias", weight(d)
        yield "cls.output.weight", weight(1, d, scale=1.0)
        yield "cls.output.bias", weight(1)
