"""Parked prompts through a real daemon (default LLMHOST_KV_HOST_CACHE): with one slot, a conversation
interrupted by another comes back from host memory, as /metrics shows, through the official client."""

from __future__ import annotations

import ollama
import pytest

from tests.e2e.conftest import start_daemon, stop_daemon
from tests.e2e.test_operate_live import scrape, value

pytestmark = pytest.mark.model

GREEDY = {"temperature": 0, "num_predict": 16}


def test_a_conversation_interrupted_in_a_one_slot_runner_continues_from_host_memory(tmp_path, smollm2_path,
                                                                                    closing):
    daemon = start_daemon(tmp_path / "d", LLMHOST_NUM_PARALLEL="1")
    try:
        result = daemon.llm("create", "smol", "-f", str(_modelfile(tmp_path, smollm2_path)))
        assert result.returncode == 0, result.stderr
        client = closing(ollama.Client(host=daemon.url))
        story = [{"role": "user", "content": "Tell me about a lighthouse keeper in two sentences."}]
        first = client.chat(model="smol", messages=story, options=GREEDY)
        client.chat(model="smol", messages=[{"role": "user", "content": "Name three red fruits."}], options=GREEDY)
        before = value(scrape(daemon.url), "llmhost_prompt_tokens_cached_total", model="smol:latest")
        turn = [*story, {"role": "assistant", "content": first.message.content},
                {"role": "user", "content": "What was his name?"}]
        second = client.chat(model="smol", messages=turn, options=GREEDY)
        samples = scrape(daemon.url)
        cached = value(samples, "llmhost_prompt_tokens_cached_total", model="smol:latest") - before
        assert second.message.content
        # The first turn's prompt and reply came back; only the new turn was evaluated.
        assert cached >= first.prompt_eval_count + first.eval_count - 4, (cached, first)
        assert value(samples, "llmhost_parked_prompts_restored_total", model="smol:latest") == 1
        assert value(samples, "llmhost_parked_prompt_bytes", model="smol:latest") > 0
    finally:
        stop_daemon(daemon)


def _modelfile(tmp_path, gguf):
    path = tmp_path / "Modelfile"
    path.write_text(f"FROM {gguf}\n")
    return path
