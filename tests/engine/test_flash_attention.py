"""llama.cpp's flash attention on, off or llama.cpp's choice (LLMHOST_FLASH_ATTENTION → ``--flash-attn``)."""

from __future__ import annotations

import pytest

from llmhost.engine.llamacpp import Context, LoadError
from tests.support.engine_harness import EngineHarness
from tests.support.runner_process import RunnerProcess

GREEDY = {"temperature": 0, "seed": 1, "num_predict": 12}


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_the_runner_starts_with_each_mode_and_reports_it(tiny_model, tmp_path, mode):
    with RunnerProcess(tiny_model, tmp_path, extra=("--flash-attn", mode)) as runner:
        reply = runner.completion({"prompt": "hello", "options": GREEDY})
        health = runner.health()
    assert health["flash_attention"] == mode
    assert reply[-1]["done"] and reply[-1]["eval_count"] == 12


def test_a_quantized_cache_without_flash_attention_is_refused_clearly(model):
    with pytest.raises(LoadError, match="q8_0 KV cache needs flash attention"):
        Context(model, n_ctx=256, n_seq_max=1, n_batch=64, kv_cache_type="q8_0", flash_attention="off")


@pytest.mark.model
def test_smollm2_without_flash_attention_still_knows_the_answer(smollm2_path):
    """Off changes how attention is summed (so a greedy reply may take other words), not what the
    model knows."""
    from llmhost.engine.llamacpp import Model

    model = Model(smollm2_path)
    try:
        replies = {}
        for mode in ("on", "off"):
            harness = EngineHarness(model, ctx_size=512, parallel=1, batch=128, flash_attention=mode)
            try:
                body = {"messages": [{"role": "user", "content": "What is the capital of France?"}],
                        "options": GREEDY}
                replies[mode] = harness.run(body).text
            finally:
                harness.close()
    finally:
        model.close()
    assert "Paris" in replies["on"] and "Paris" in replies["off"]
