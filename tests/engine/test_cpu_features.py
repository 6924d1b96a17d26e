"""Whether the runner lets llama.cpp repack weights for its faster CPU kernels (LLMHOST_CPU_REPACK)."""

from __future__ import annotations

import pytest

from llmhost.engine.cpu import cpu_flags, repack_enabled

XEON_AMX = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile amx_int8\n\n"
EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm sve\n\n"


@pytest.mark.parametrize("cpuinfo, flag", [(XEON_AMX, "amx_tile"), (EPYC, "avx512_vnni"), (ARM, "i8mm")],
                         ids=["xeon-amx", "epyc", "arm"])
def test_the_first_cpus_flags_are_read(tmp_path, cpuinfo, flag):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert flag in cpu_flags(path)


@pytest.mark.parametrize("mode, cpuinfo, enabled", [
    ("auto", XEON_AMX, False),  # the AMX buffer type segfaults in llama_decode
    ("auto", EPYC, True),
    ("auto", ARM, True),
    ("on", XEON_AMX, True),
    ("off", EPYC, False),
], ids=["auto-amx", "auto-epyc", "auto-arm", "forced-on", "forced-off"])
def test_repacking_is_off_only_where_amx_would_crash_unless_forced(tmp_path, mode, cpuinfo, enabled):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert repack_enabled(mode, cpu_flags(path)) is enabled


def test_without_cpuinfo_auto_repacks(tmp_path):
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert repack_enabled("auto", frozenset()) is True


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="auto, on, off"):
        repack_enabled("sometimes")


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_the_runner_says_whether_it_repacked(tiny_model, tmp_path, mode):
    from tests.support.runner_process import RunnerProcess

    with RunnerProcess(tiny_model, tmp_path, extra=("--cpu-repack", mode)) as runner:
        assert runner.health()["cpu_repack"] is repack_enabled(mode)


@pytest.fixture(scope="module")
def smollm2_q4_0(smollm2_path, tmp_path_factory):
    """SmolLM2 requantized to Q4_0, the type whose repacked kernels x86 CPUs use most."""
    import ctypes

    import llama_cpp.llama_cpp as L

    from llmhost.engine.llamacpp import init_backend

    init_backend()
    target = tmp_path_factory.mktemp("q4_0") / "smollm2-q4_0.gguf"
    params = L.llama_model_quantize_default_params()
    params.ftype, params.allow_requantize = L.LLAMA_FTYPE_MOSTLY_Q4_0, True
    assert L.llama_model_quantize(str(smollm2_path).encode(), str(target).encode(), ctypes.byref(params)) == 0
    return target


@pytest.mark.model
@pytest.mark.skipif(not repack_enabled("auto"), reason="this CPU has AMX: repacked weights crash llama_decode")
def test_repacked_q4_0_answers_deterministically_and_costs_what_the_estimate_says(smollm2_q4_0, tmp_path):
    from llmhost.daemon.memory import repacked_bytes
    from llmhost.registry.gguf_meta import read_gguf_info
    from tests.support.runner_process import RunnerProcess, text_of

    ask = {"messages": [{"role": "user", "content": "What is the capital of France?"}],
           "options": {"temperature": 0, "num_predict": 24}}
    resident = {}
    for mode in ("on", "off"):
        (tmp_path / mode).mkdir()
        with RunnerProcess(smollm2_q4_0, tmp_path / mode, threads=2, extra=("--cpu-repack", mode)) as runner:
            first, second = text_of(runner.completion(ask)), text_of(runner.completion(ask))
            assert first == second and "Paris" in first
            resident[mode] = runner.health()["memory_bytes"]
    # The repacked copy is anonymous memory beside the mapped file's pages (57 MiB for this model).
    extra = repacked_bytes(read_gguf_info(smollm2_q4_0))
    assert resident["on"] - resident["off"] == pytest.approx(extra, rel=0.05)
