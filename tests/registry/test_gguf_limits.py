"""Reading GGUF metadata within bounded work: vocabularies counted not kept, limits named, no recursion."""

from __future__ import annotations

import dataclasses
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest
from gguf import GGUFValueType

from llmhost.daemon.memory import estimate
from llmhost.errors import InvalidModelFile
from llmhost.registry import gguf_meta
from llmhost.registry.gguf_meta import MetadataArray, MetadataLimits, read_gguf_info
from tests.support.tiny_gguf import raw_gguf, raw_kv, raw_nested_array, raw_string, raw_string_array

from .helpers import CHAT_TEMPLATE, VOCAB, write_tiny_gguf

ARCH = raw_kv("general.architecture", GGUFValueType.STRING, raw_string("llama"))


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def many_strings(path: Path, count: int) -> Path:
    """A metadata-only GGUF with ``count`` one-byte strings in a vocabulary and in another array."""
    half = count // 2
    return write(path, raw_gguf(ARCH, raw_string_array("tokenizer.ggml.tokens", ["a"] * half),
                                raw_string_array("general.tags", ["b"] * (count - half))))


class CountingStrings:
    """Counts the strings the reader decodes (each one a Python object kept or built)."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = gguf_meta._Reader.string

        def counting(reader, *args, **kwargs):
            self.count += 1
            return original(reader, *args, **kwargs)

        monkeypatch.setattr(gguf_meta._Reader, "string", counting)


def test_many_tiny_strings_are_stepped_over_not_decoded(tmp_path, monkeypatch):
    path = many_strings(tmp_path / "strings.gguf", 200_000)
    decoded = CountingStrings(monkeypatch)
    tracemalloc.start()
    try:
        info = read_gguf_info(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.vocab_size == 100_000
    assert info.metadata["general.tags"] == MetadataArray(GGUFValueType.STRING, 100_000)
    assert decoded.count <= 10, "only keys and scalar strings are decoded"
    assert peak < 1 << 20, f"reading 200k strings allocated {peak} bytes at peak"


def test_too_many_strings_is_a_400_naming_the_limit(tmp_path):
    path = many_strings(tmp_path / "strings.gguf", 3000)
    with pytest.raises(InvalidModelFile) as err:
        read_gguf_info(path, MetadataLimits(max_string_items=2000))
    assert err.value.status == 400
    assert "more than 2000 strings" in str(err.value)


# A limit each, small enough for the tiny model (32 tokens, a ~200-byte template, 21 tensors, ~2 KB).
LIMITS = {
    "key/value pairs": (MetadataLimits(max_kv_count=5), "metadata keys; the limit is 5"),
    "string length": (MetadataLimits(max_string_bytes=100), "the limit is 100"),
    "array length": (MetadataLimits(max_array_items=10), "too large; the limit is 10 items"),
    "strings in arrays": (MetadataLimits(max_string_items=10), "more than 10 strings"),
    "bytes read": (MetadataLimits(max_metadata_bytes=1000), "larger than 1000 bytes"),
    "tensor count": (MetadataLimits(max_tensors=5), "tensors; the limit is 5"),
}


@pytest.mark.parametrize("limits,message", LIMITS.values(), ids=LIMITS.keys())
def test_each_limit_refuses_with_its_name(tiny_gguf, limits, message):
    with pytest.raises(InvalidModelFile) as err:
        read_gguf_info(tiny_gguf, limits)
    assert err.value.status == 400 and message in str(err.value)


def test_the_default_limits_leave_real_files_alone(tiny_gguf):
    assert read_gguf_info(tiny_gguf).chat_template == CHAT_TEMPLATE


@pytest.mark.parametrize("depth", [2, 100_000])
def test_nested_arrays_are_a_400_not_a_recursion_error(tmp_path, depth):
    path = write(tmp_path / "nested.gguf", raw_gguf(ARCH, raw_nested_array("general.tags", depth)))
    with pytest.raises(InvalidModelFile, match="array of arrays") as err:
        read_gguf_info(path)
    assert err.value.status == 400


def test_verbose_reads_the_vocabulary_again_without_caching_it(tiny_gguf):
    info = read_gguf_info(tiny_gguf)
    assert isinstance(info.metadata["tokenizer.ggml.tokens"], MetadataArray)
    assert info.model_info()["tokenizer.ggml.tokens"] is None
    assert info.model_info(verbose=True)["tokenizer.ggml.tokens"] == VOCAB
    assert isinstance(read_gguf_info(tiny_gguf).metadata["tokenizer.ggml.tokens"], MetadataArray)


def test_fill_in_middle_tokens_in_a_short_vocabulary(tmp_path):
    tokens = ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"]
    path = write(tmp_path / "fim.gguf", raw_gguf(ARCH, raw_string_array("tokenizer.ggml.tokens", tokens)))
    assert read_gguf_info(path).fim_tokens == (0, 2, 1)


def test_fill_in_middle_tokens_found_while_stepping_over_a_long_one(tmp_path):
    tokens = [f"t{i}" for i in range(1000)] + ["<PRE>", "<SUF>", "<MID>", "<PRE>"]
    path = write(tmp_path / "fim.gguf", raw_gguf(ARCH, raw_string_array("tokenizer.ggml.tokens", tokens)))
    assert read_gguf_info(path).fim_tokens == (1000, 1001, 1002)


# ---- the memory estimate reads the same numbers as before ---------------------------------------------

# What the estimate reads, as the GGUFReader-based code found it before the reader was replaced.
BEFORE = {
    "SmolLM2": dict(total_tensor_bytes=96576768, output_bytes=30083328, parameter_count=134515008,
                    tensor_count=272, vocab_size=49152, context_length=8192, block_count=30, head_count=9,
                    head_count_kv=3, embedding_length=576, key_length=64, value_length=64,
                    layers=30, all_layer_bytes=66493440),
    "Gemma 3": dict(total_tensor_bytes=246587904, output_bytes=178260480, parameter_count=268098176,
                    tensor_count=236, vocab_size=262144, context_length=32768, block_count=18, head_count=4,
                    head_count_kv=1, embedding_length=640, key_length=256, value_length=256,
                    layers=18, all_layer_bytes=68327424),
}


@pytest.fixture(params=BEFORE, ids=BEFORE)
def real_model(request, smollm2_path, gemma3_path):
    return request.param, {"SmolLM2": smollm2_path, "Gemma 3": gemma3_path}[request.param]


@pytest.mark.model
def test_estimate_of_the_real_models_is_unchanged(real_model):
    name, path = real_model
    info = read_gguf_info(path)
    layers = {"layers": len(info.layer_bytes), "all_layer_bytes": sum(info.layer_bytes.values())}
    assert {key: layers.get(key, getattr(info, key, None)) for key in BEFORE[name]} == BEFORE[name]
    assert sorted(info.layer_bytes) == list(range(BEFORE[name]["layers"]))
    before = SimpleNamespace(**BEFORE[name], layer_bytes=info.layer_bytes)
    for num_ctx, parallel, batch in ((2048, 1, 512), (8192, 4, 512), (4096, 2, 64)):
        assert estimate(info, num_ctx, parallel, batch) == estimate(before, num_ctx, parallel, batch)


@pytest.mark.model
def test_real_vocabularies_are_not_kept(real_model):
    _, path = real_model
    info = read_gguf_info(path)
    kept = [key for key, value in info.metadata.items() if isinstance(value, tuple) and len(value) > 5]
    assert kept == []
    assert len(info.metadata["tokenizer.ggml.tokens"]) == info.vocab_size
    assert gguf_meta._weight(info) < 64 << 10, "the cached info holds a few numbers and the template"


def test_the_cache_is_bounded_in_bytes(tmp_path):
    cache = gguf_meta._InfoCache(max_entries=100, max_bytes=50_000)
    path = write_tiny_gguf(tmp_path / "t.gguf")
    info = read_gguf_info(path)
    big = dataclasses.replace(info, metadata={"general.license": "x" * 30_000})
    cache.put(("a",), big)
    cache.put(("b",), big)
    assert cache.get(("a",)) is None and cache.get(("b",)) is big
