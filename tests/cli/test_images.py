"""Images from the command line, as Ollama's CLI attaches them: a path in the prompt of a vision model
(``llm run MODEL "describe ./cat.png"``, or a REPL message) is read, base64'd into ``images`` and taken
out of the text; and ``llm create`` with a Modelfile whose second FROM is a projector."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.support.fake_daemon import MODEL, show_answer

from .test_run import run_repl

SEER = "seer:latest"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)
JPEG = b"\xff\xd8\xff\xe0" + bytes(32)
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + bytes(24)


@pytest.fixture
def seer(daemon):
    daemon.models[SEER] = {**show_answer(SEER), "capabilities": ["completion", "vision"]}
    return SEER


@pytest.fixture
def pictures(tmp_path, monkeypatch):
    """cat.png, dog.jpg, a fox.webp, a spaced 'my cat.png' and a notes.png that is text, in the cwd."""
    monkeypatch.chdir(tmp_path)
    files = {"cat.png": PNG, "dog.jpg": JPEG, "fox.webp": WEBP, "my cat.png": PNG, "notes.png": b"just text"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PROMPTS = {
    "one image": ("describe ./cat.png", "describe", [PNG], ["./cat.png"]),
    "two kinds": ("./dog.jpg or ./fox.webp?", "or ?", [JPEG, WEBP], ["./dog.jpg", "./fox.webp"]),
    "escaped space": ("look at ./my\\ cat.png", "look at", [PNG], ["./my cat.png"]),
    "quoted": ("look at './cat.png' now", "look at  now", [PNG], ["./cat.png"]),
    "no such file: kept as text": ("describe ./bird.png", "describe ./bird.png", [], []),
    "not a path: kept as text": ("what is cat.png?", "what is cat.png?", [], []),
}


@pytest.mark.parametrize("prompt, sent, images, added", PROMPTS.values(), ids=PROMPTS.keys())
def test_run_attaches_the_images_a_prompt_names(llm, daemon, seer, pictures, prompt, sent, images, added):
    result = llm("run", seer, prompt)
    assert result.exit_code == 0, result.output
    body = daemon.bodies("/api/generate")[-1]
    assert (body["prompt"], body.get("images", [])) == (sent, [b64(i) for i in images])
    assert [line for line in result.stderr.splitlines() if line.startswith("Added")] == [
        f"Added image '{path}'" for path in added]


def test_an_absolute_path_works_too(llm, daemon, seer, pictures):
    assert llm("run", seer, f"describe {pictures / 'cat.png'}").exit_code == 0
    assert daemon.bodies("/api/generate")[-1]["images"] == [b64(PNG)]


def test_a_model_without_vision_gets_the_path_as_text(llm, daemon, pictures):
    result = llm("run", MODEL, "describe ./cat.png")
    body = daemon.bodies("/api/generate")[-1]
    assert (body["prompt"], "images" in body, "Added" in result.stderr) == ("describe ./cat.png", False, False)


def test_a_file_that_is_not_an_image_fails_before_anything_is_sent(llm, daemon, seer, pictures):
    result = llm("run", seer, "read ./notes.png")
    assert result.exit_code == 1
    assert result.stderr == "Error: couldn't process file './notes.png': not a JPEG, PNG or WebP image\n"
    assert daemon.bodies("/api/generate") == []


def test_the_repl_attaches_images_and_keeps_them_in_the_history(daemon, seer, pictures, capsys):
    run = run_repl(daemon, [f"{pictures / 'cat.png'} what is it?", "and now?"], capsys, model=seer)
    first, last = daemon.bodies("/api/chat")
    assert first["messages"] == [{"role": "user", "content": "what is it?", "images": [b64(PNG)]}]
    assert last["messages"][0] == first["messages"][0] and last["messages"][-1] == {"role": "user",
                                                                                    "content": "and now?"}
    assert "Unknown command" not in run.out and f"Added image '{pictures / 'cat.png'}'" in run.err


def test_the_repl_reports_an_unreadable_image_and_goes_on(daemon, seer, pictures, capsys):
    run = run_repl(daemon, ["read ./notes.png", "hi"], capsys, model=seer)
    assert "couldn't process file './notes.png'" in run.err
    assert [b["messages"] for b in daemon.bodies("/api/chat")] == [[{"role": "user", "content": "hi"}]]


@pytest.mark.parametrize("model, shown", [(SEER, True), (MODEL, False)])
def test_repl_help_tells_how_to_add_images_to_a_vision_model(daemon, seer, capsys, model, shown):
    run = run_repl(daemon, ["/?"], capsys, model=model)
    assert ("Use /path/to/file to include .jpg, .png, .webp images." in run.out) is shown


def test_create_uploads_a_projector_from_a_second_from_line(llm, daemon, tmp_path):
    model, projector = b"GGUF model" + bytes(64), b"GGUF projector" + bytes(64)
    (tmp_path / "model.gguf").write_bytes(model)
    (tmp_path / "mmproj.gguf").write_bytes(projector)
    (tmp_path / "Modelfile").write_text("FROM ./model.gguf\nFROM ./mmproj.gguf\n")
    assert llm("create", "seer", "-f", str(tmp_path / "Modelfile")).exit_code == 0
    digests = {name: "sha256:" + hashlib.sha256(data).hexdigest()
               for name, data in (("model.gguf", model), ("mmproj.gguf", projector))}
    assert daemon.bodies("/api/create")[0]["files"] == digests
    assert {daemon.blobs[d] for d in digests.values()} == {model, projector}


def test_create_sends_from_and_the_projector_for_an_installed_model(llm, daemon, tmp_path):
    (tmp_path / "mmproj.gguf").write_bytes(b"GGUF projector")
    (tmp_path / "Modelfile").write_text(f"FROM {MODEL}\nFROM ./mmproj.gguf\n")
    assert llm("create", "seer", "-f", str(tmp_path / "Modelfile")).exit_code == 0
    body = daemon.bodies("/api/create")[0]
    assert body["from"] == MODEL and list(body["files"]) == ["mmproj.gguf"]


def test_create_refuses_two_model_names(llm, daemon, tmp_path):
    (tmp_path / "Modelfile").write_text(f"FROM {MODEL}\nFROM other\n")
    result = llm("create", "seer", "-f", str(tmp_path / "Modelfile"))
    assert result.exit_code == 1 and "FROM other: only one FROM may name a model" in result.stderr
    assert daemon.bodies("/api/create") == []
