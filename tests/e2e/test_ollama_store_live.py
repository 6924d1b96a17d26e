"""A real daemon pointed at an Ollama store (written as Ollama writes one, with SmolLM2 as the GGUF):
the CLI lists it, and its Go-template models run through real runners."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.e2e.conftest import start_daemon, stop_daemon
from tests.support.ollama_store import CHATTY_TEMPLATE, build_ollama_store


@pytest.fixture
def ollama_daemon(tmp_path, smollm2_path):
    build_ollama_store(tmp_path / "d" / "models", smollm2_path)
    daemon = start_daemon(tmp_path / "d")
    yield daemon
    stop_daemon(daemon)


def post(daemon, path: str, body: dict) -> dict:
    request = urllib.request.Request(daemon.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=240) as response:
        return json.loads(response.read())


GREEDY = {"temperature": 0, "num_predict": 8}


def test_an_ollama_store_lists_shows_and_runs(ollama_daemon, smollm2_path):
    listed = ollama_daemon.llm("list")
    assert listed.returncode == 0, listed.stderr
    assert "chatty:latest" in listed.stdout and "legacy:7b" in listed.stdout
    assert post(ollama_daemon, "/api/show", {"model": "chatty"})["template"] == CHATTY_TEMPLATE
    chat = post(ollama_daemon, "/api/chat", {"model": "chatty", "stream": False, "think": False, "options": GREEDY,
                                             "messages": [{"role": "user", "content": "What is 2+2?"}]})
    assert chat["message"]["content"] and chat["prompt_eval_count"] > 40  # the system and example turns too
    generated = post(ollama_daemon, "/api/generate", {"model": "legacy:7b", "stream": False, "options": GREEDY,
                                                      "prompt": "Name a color."})
    expected = tokens(smollm2_path, "[INST] <<SYS>>Answer briefly.<</SYS>>\n\nName a color. [/INST] ")
    assert generated["prompt_eval_count"] == len(expected)
    assert generated["context"][:len(expected)] == expected, "the very prompt Ollama's rules give, token for token"
    with pytest.raises(urllib.error.HTTPError) as failed:  # parses, so the runner runs it, and it fails there
        post(ollama_daemon, "/api/generate", {"model": "legacy:7b", "prompt": "x", "template": "{{ index .Messages 5 }}"})
    assert failed.value.code == 400
    assert "at 1:4: error calling index: index out of range: 5" in json.loads(failed.value.read())["error"]


def tokens(model_path, text: str) -> list[int]:
    from llmhost.engine.llamacpp import Model

    model = Model(model_path)
    try:
        return model.tokenize(text, add_special=True, parse_special=True).tolist()
    finally:
        model.close()
