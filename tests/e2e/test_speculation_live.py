"""Speculative decoding through a real daemon: the official ollama client, a Modelfile PARAMETER, /metrics."""

from __future__ import annotations

import ollama
import pytest

from llmhost.engine.llamacpp import Context, Model
from llmhost.engine.speculation import probe
from tests.e2e.test_operate_live import scrape, value

pytestmark = pytest.mark.model


def rows_exact(path) -> bool:
    """What the runner's probe will find for this model on this CPU (engine.speculation.probe)."""
    model = Model(path)
    try:
        ctx = Context(model, n_ctx=256, n_seq_max=1, n_batch=64, n_threads=2)
        try:
            return probe(ctx, model, 0).exact
        finally:
            ctx.close()
    finally:
        model.close()

PASSAGE = ("The old lighthouse keeper climbed the spiral stairs every evening at dusk, lit the great lamp, "
           "and watched the ships pass safely through the narrow channel between the rocks.")
MESSAGES = [{"role": "user", "content": f"Repeat this sentence exactly:\n\n{PASSAGE}"}]


def test_drafts_asked_for_in_options_or_the_modelfile_are_used_and_change_no_reply(live_daemon, smollm2_path,
                                                                                    closing):
    if not rows_exact(smollm2_path):
        pytest.skip("this CPU's batched rows of SmolLM2 differ from single rows: the runner does not draft here")
    daemon = live_daemon
    for name, parameter in (("smol", ""), ("smol-draft", "PARAMETER draft_num_predict 8\n")):
        modelfile = daemon.workdir / f"{name}.Modelfile"
        modelfile.write_text(f"FROM {smollm2_path}\n{parameter}")
        result = daemon.llm("create", name, "-f", str(modelfile))
        assert result.returncode == 0, result.stderr
    client = closing(ollama.Client(host=daemon.url))
    greedy = {"temperature": 0, "num_predict": 64}

    plain = client.chat(model="smol", messages=MESSAGES, options=greedy)
    assert value(scrape(daemon.url), "llmhost_draft_tokens_total", model="smol:latest") == 0
    asked = client.chat(model="smol", messages=MESSAGES, options={**greedy, "draft_num_predict": 8})
    from_modelfile = client.chat(model="smol-draft", messages=MESSAGES, options=greedy)

    assert asked.message.content == plain.message.content == from_modelfile.message.content
    assert PASSAGE[:40] in plain.message.content
    assert asked.eval_count == plain.eval_count
    samples = scrape(daemon.url)
    # Both copies share one runner (the option is per request): its counters hold both replies' drafts
    # (under the name of whichever copy it last served).
    drafted = sum(v for (name, _), v in samples.items() if name == "llmhost_draft_tokens_total")
    accepted = sum(v for (name, _), v in samples.items() if name == "llmhost_draft_tokens_accepted_total")
    # How much is drafted depends on the row cost the runner times (the engine tests pin it and count
    # the steps saved); here: drafts were tried and kept, and the replies did not change.
    assert 0 < accepted <= drafted, {k: v for k, v in samples.items() if "draft" in k[0]}
