"""Stateful Responses on the real SmolLM2 with the official ``openai`` client: a daemon, real runners.

A conversation continued by ``previous_response_id`` is rendered by the daemon from what it stored, so
the runner finds the previous turn (prompt and answer) in its KV cache and evaluates only the new
tokens; ``usage.input_tokens_details.cached_tokens`` reports it. Stored responses outlive the daemon.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import start_daemon, stop_daemon

pytestmark = pytest.mark.model

QUESTIONS = ["What is the capital of France?", "And the capital of Italy?", "Which of the two is bigger?",
             "Name a river in the first one.", "Thank you, goodbye."]
INSTRUCTIONS = "Answer in one short sentence."


@pytest.fixture
def smol(live_daemon, smollm2_path, tmp_path):
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {smollm2_path}\n")
    result = live_daemon.llm("create", "smol", "-f", str(modelfile))
    assert result.returncode == 0, result.stderr
    return live_daemon


def client_for(daemon):
    import openai

    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", timeout=240)


def test_five_turns_by_previous_response_id_evaluate_only_the_new_tokens(smol, closing):
    client = closing(client_for(smol))
    previous = None
    for question in QUESTIONS:
        extra = {"previous_response_id": previous.id} if previous else {}
        reply = client.responses.create(model="smol", input=question, instructions=INSTRUCTIONS,
                                        max_output_tokens=32, temperature=0, **extra)
        assert reply.output_text.strip() and reply.status in ("completed", "incomplete")
        usage = reply.usage
        if previous is not None:
            cached = usage.input_tokens_details.cached_tokens
            assert cached >= previous.usage.input_tokens, (previous.usage, usage)
            # The previous answer too (all but its last token, which was sampled and never evaluated).
            assert cached >= previous.usage.input_tokens + previous.usage.output_tokens - 1
            # What is evaluated anew: at most the previous answer's last token, the new question and the
            # template's turn markers — never the conversation again.
            evaluated = usage.input_tokens - cached
            assert 0 < evaluated <= len(question) // 2 + 16, usage
            assert usage.input_tokens > previous.usage.input_tokens + previous.usage.output_tokens
        previous = reply
    assert client.responses.retrieve(previous.id).output_text == previous.output_text


def test_streamed_turn_then_a_restart_keeps_the_conversation(smol, closing):
    client = closing(client_for(smol))
    with client.responses.stream(model="smol", input=QUESTIONS[0], max_output_tokens=128, temperature=0) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        first = stream.get_final_response()
    assert text.strip() and text == first.output_text

    stop_daemon(smol)
    restarted = start_daemon(smol.workdir)
    try:
        client = closing(client_for(restarted))
        assert client.responses.retrieve(first.id).output_text == first.output_text
        second = client.responses.create(input=QUESTIONS[1], previous_response_id=first.id, max_output_tokens=24,
                                         temperature=0, model="smol")
        assert second.output_text.strip()
        assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
        client.responses.delete(first.id)
        with pytest.raises(Exception, match="not found"):
            client.responses.retrieve(first.id)
    finally:
        stop_daemon(restarted)
