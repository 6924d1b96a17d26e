import os
import struct
from pathlib import Path

import pytest

from llmhost.errors import InvalidModelFile
from llmhost.registry.gguf_meta import human_number, quantization_name, read_gguf_info

from .helpers import CHAT_TEMPLATE, FFN, LAYERS, VOCAB, WIDTH, write_tiny_gguf


def mapped(path: Path) -> bool:
    """Whether this process still has ``path`` memory-mapped (an open handle keeps the file alive)."""
    return str(path) in Path("/proc/self/maps").read_text()


def test_tiny_model_metadata(tiny_gguf):
    info = read_gguf_info(tiny_gguf)
    assert info.architecture == "llama"
    assert info.quantization == "F32" and info.file_type == 0
    assert (info.context_length, info.embedding_length, info.block_count) == (256, WIDTH, LAYERS)
    assert (info.head_count, info.head_count_kv, info.key_length, info.value_length) == (4, 2, 16, 16)
    assert info.vocab_size == len(VOCAB)
    assert info.chat_template == CHAT_TEMPLATE
    per_layer = 4 * (2 * WIDTH + 2 * WIDTH * WIDTH + 2 * (WIDTH // 2) * WIDTH + 3 * FFN * WIDTH)
    assert dict(info.layer_bytes) == {0: per_layer, 1: per_layer}
    assert info.output_bytes == 4 * (WIDTH + len(VOCAB) * WIDTH)  # output_norm + output
    assert info.total_tensor_bytes == 2 * per_layer + info.output_bytes + 4 * len(VOCAB) * WIDTH
    assert info.parameter_count == info.total_tensor_bytes // 4


def test_model_info_hides_token_arrays_unless_verbose(tiny_gguf):
    info = read_gguf_info(tiny_gguf)
    short = info.model_info()
    assert short["general.architecture"] == "llama"
    assert short["llama.context_length"] == 256
    assert short["general.parameter_count"] == info.parameter_count
    assert short["tokenizer.ggml.tokens"] is None
    assert short["llama.attention.layer_norm_rms_epsilon"] == 1e-05  # not 9.99999974e-06
    assert not any(k.startswith("GGUF.") for k in short)
    verbose = info.model_info(verbose=True)
    assert verbose["tokenizer.ggml.tokens"] == VOCAB
    assert verbose["tokenizer.ggml.token_type"] == [1] * len(VOCAB)


def test_reading_releases_the_file(tmp_path):
    path = write_tiny_gguf(tmp_path / "fresh.gguf")
    read_gguf_info(path)
    assert not mapped(path)


@pytest.mark.parametrize("n,text", [(0, "0"), (999, "999"), (135_000, "135K"), (134_515_008, "134.52M"),
                                    (8_000_000_000, "8B"), (1_235_814_400, "1.2B")])
def test_human_number_matches_ollama(n, text):
    assert human_number(n) == text


@pytest.mark.parametrize("file_type,name", [(0, "F32"), (1, "F16"), (3, "Q4_1"), (15, "Q4_K_M"), (32, "BF16"),
                                            (None, "unknown"), (9999, "unknown")])
def test_quantization_names(file_type, name):
    assert quantization_name(file_type) == name


# ---- malformed files --------------------------------------------------------------------------------


def patch_after(data: bytes, marker: bytes, skip: int, fmt: str, value: int) -> bytes:
    """Overwrite a little-endian value ``skip`` bytes after the end of ``marker``."""
    at = data.index(marker) + len(marker) + skip
    return data[:at] + struct.pack(fmt, value) + data[at + struct.calcsize(fmt):]


def length_prefixed(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


OUTPUT = length_prefixed("output.weight")  # the tensor info record of a 2-D tensor
OUTPUT_TYPE = 4 + 8 * 2  # after the name: n_dims, two dims, then the type and the data offset

# name → (how to damage the tiny file (tiny bytes, tiny bytes written with alignment 64), message)
MALFORMED = {
    "empty file": (lambda t, a: b"", "not a GGUF file"),
    "4 bytes of magic": (lambda t, a: b"GGUF", "truncated GGUF file"),
    "4 other bytes": (lambda t, a: b"\x7fELF", "not a GGUF file"),
    "random bytes": (lambda t, a: os.urandom(4096).replace(b"GGUF", b"XXXX"), "not a GGUF file"),
    "version 1": (lambda t, a: b"GGUF" + struct.pack("<I", 1) + t[8:], "unsupported GGUF version 1"),
    "header cut": (lambda t, a: t[:20], "truncated GGUF file"),
    "header counts too big": (lambda t, a: t[:300], "truncated GGUF file"),
    "metadata cut": (lambda t, a: t[:1500], "truncated GGUF file: metadata runs past"),
    "tensor data cut": (lambda t, a: t[:-1000], 'truncated GGUF file: tensor "'),
    "absurd tensor count": (lambda t, a: t[:8] + struct.pack("<Q", 2**40) + t[16:], "truncated GGUF file"),
    "alignment 0": (lambda t, a: patch_after(a, b"general.alignment", 4, "<I", 0), "alignment"),
    "huge array": (lambda t, a: patch_after(t, b"tokenizer.ggml.tokens", 8, "<Q", 2**40), "too large"),
    "array longer than file": (lambda t, a: patch_after(t, b"tokenizer.ggml.token_type", 8, "<Q", 10**6), "truncated"),
    "huge string": (lambda t, a: patch_after(t, b"general.name", 4, "<Q", 2**60), "truncated GGUF file"),
    "tensor offset past EOF": (lambda t, a: patch_after(t, OUTPUT, OUTPUT_TYPE + 4, "<Q", 2**50), "output.weight"),
    "unknown tensor type": (lambda t, a: patch_after(t, OUTPUT, OUTPUT_TYPE, "<I", 9999), "unknown type 9999"),
    "unknown value type": (lambda t, a: patch_after(t, b"general.name", 0, "<I", 77), "malformed GGUF file"),
}


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    tiny = write_tiny_gguf(root / "ok.gguf").read_bytes()
    aligned = write_tiny_gguf(root / "aligned.gguf", alignment=64).read_bytes()
    return root, tiny, aligned


@pytest.mark.parametrize("damage,problem", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_files_are_refused_cleanly(originals, damage, problem):
    root, tiny, aligned = originals
    path = root / "damaged.gguf"
    path.write_bytes(damage(tiny, aligned))
    with pytest.raises(InvalidModelFile) as err:
        read_gguf_info(path)
    assert problem in str(err.value)
    assert err.value.status == 400
    assert not mapped(path)


def test_missing_file_is_an_invalid_model_file(tmp_path):
    with pytest.raises(InvalidModelFile, match="cannot read"):
        read_gguf_info(tmp_path / "absent.gguf")


# ---- the real test model ----------------------------------------------------------------------------


@pytest.mark.model
def test_smollm2_metadata(smollm2_path):
    info = read_gguf_info(smollm2_path)
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert "<|im_start|>" in (info.chat_template or "")
    assert 130e6 < info.parameter_count < 140e6 and info.parameter_size == "134.52M"
    assert (info.context_length, info.block_count, info.head_count_kv, info.vocab_size) == (8192, 30, 3, 49152)
    assert sorted(info.layer_bytes) == list(range(30))
    assert info.output_bytes > 30_000_000  # tied embeddings count as the output layer
    assert info.total_tensor_bytes < info.file_size
    assert info.model_info()["tokenizer.ggml.merges"] is None
    assert len(info.model_info(verbose=True)["tokenizer.ggml.tokens"]) == 49152
    assert not mapped(smollm2_path)
