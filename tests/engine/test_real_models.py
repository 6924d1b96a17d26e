"""Real models through the real runner (``-m model``; skipped when the files are missing)."""

from __future__ import annotations

import pytest

from tests.support.runner_process import RunnerProcess, text_of

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def smollm2(smollm2_path, tmp_path_factory):
    with RunnerProcess(smollm2_path, tmp_path_factory.mktemp("smollm2"), ctx_size=2048, parallel=2, threads=2) as proc:
        yield proc


def ask(question: str, **options) -> dict:
    return {
        "messages": [{"role": "user", "content": question}],
        "options": {"temperature": 0, "seed": 1, "num_predict": 48, **options},
    }


def test_smollm2_answers_a_chat_question_deterministically(smollm2):
    first = smollm2.completion(ask("What is the capital of France?"))
    second = smollm2.completion(ask("What is the capital of France?"))
    answer = text_of(first)
    assert "Paris" in answer
    assert answer == text_of(second)
    assert second[-1]["prompt_cached_count"] == first[-1]["prompt_eval_count"] - 1


def test_smollm2_stops_at_end_of_turn(smollm2):
    final = smollm2.completion(ask("Say just the word yes.", num_predict=200))[-1]
    assert final["done_reason"] == "stop" and final["eval_count"] < 200


def test_smollm2_follow_up_turn_reuses_the_conversation(smollm2):
    messages = [{"role": "user", "content": "Name a color."}]
    first = smollm2.completion({"messages": messages, "options": {"temperature": 0, "num_predict": 30}})
    messages += [{"role": "assistant", "content": text_of(first)}, {"role": "user", "content": "Another one?"}]
    second = smollm2.completion({"messages": messages, "options": {"temperature": 0, "num_predict": 30}})[-1]
    assert second["prompt_cached_count"] >= first[-1]["prompt_eval_count"] + first[-1]["prompt_cached_count"]
    assert second["prompt_eval_count"] < 20


def test_smollm2_json_format(smollm2):
    import json

    reply = text_of(smollm2.completion({**ask("Give a JSON object with a field name set to Bob."), "format": "json"}))
    assert isinstance(json.loads(reply), dict)


def test_smollm2_json_schema_format(smollm2):
    import json

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    reply = text_of(smollm2.completion({**ask("Describe Bob, who is 30, as JSON."), "format": schema}))
    data = json.loads(reply)
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


def test_gemma3_base_model_completes_text(gemma3_path, tmp_path):
    with RunnerProcess(gemma3_path, tmp_path, ctx_size=512, parallel=2, threads=2) as proc:
        body = {"prompt": "The capital of France is", "options": {"temperature": 0, "num_predict": 8}}
        first = proc.completion(body)
        second = proc.completion(body)
    assert text_of(first).strip() and text_of(first) == text_of(second)


def test_gemma3_sliding_window_model_generates_past_its_context_with_shift(gemma3_path, tmp_path):
    with RunnerProcess(gemma3_path, tmp_path, ctx_size=256, parallel=1, threads=2) as proc:
        body = {"prompt": "Once upon a time, in a small village,", "options": {"temperature": 0, "num_predict": 300}}
        final = proc.completion(body)[-1]
        shifts = proc.health()["engine"]["context_shifts"]
    assert final["done_reason"] == "length" and final["eval_count"] == 300 and shifts >= 1
