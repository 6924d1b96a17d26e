"""list, show, ps, pull, create, cp, rm, stop through the real typer app against the fake daemon."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.support.fake_daemon import DIGEST, MODEL, tag_entry


def test_list_prints_name_id_size_modified(llm, daemon):
    result = llm("list")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert row.split()[:4] == [MODEL, DIGEST[7:19], "98", "MB"]
    assert row.endswith("years ago")


def test_ls_is_list(llm, daemon):
    assert llm("ls").stdout == llm("list").stdout


@pytest.mark.parametrize("command", ["list", "ps", "show"])
def test_json_prints_the_daemons_json(llm, daemon, command):
    daemon.loaded = [tag_entry()]
    args = [command, MODEL, "--json"] if command == "show" else [command, "--json"]
    result = llm(*args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert ("model_info" in data) if command == "show" else (data["models"][0]["name"] == MODEL)


def test_show_prints_model_capabilities_parameters_license(llm, daemon):
    result = llm("show", MODEL)
    assert result.exit_code == 0, result.output
    text = result.stdout
    for expected in ("architecture", "llama", "context length", "8192", "135M", "Q4_1", "completion",
                     "temperature", "MIT License", "You are tiny."):
        assert expected in text


@pytest.mark.parametrize("flag, expected", [
    ("--template", "{{ .Prompt }}\n"),
    ("--system", "You are tiny.\n"),
    ("--modelfile", "FROM tiny:latest\nTEMPLATE {{ .Prompt }}\n"),
])
def test_show_one_field(llm, daemon, flag, expected):
    assert llm("show", MODEL, flag).stdout == expected


def test_show_rejects_two_fields(llm, daemon):
    result = llm("show", MODEL, "--template", "--system")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: only one of")


def test_ps_prints_processor_context_slots_queue_cache_hit_and_until(llm, daemon):
    expires = (datetime.now(timezone.utc) + timedelta(minutes=4, seconds=30)).isoformat().replace("+00:00", "Z")
    daemon.loaded = [{**tag_entry(), "size_vram": 0, "context_length": 4096, "expires_at": expires,
                      "parallel": 4, "slots_in_use": 3, "queue_depth": 2, "cache_hit_rate": 0.875}]
    result = llm("ps")
    assert result.exit_code == 0, result.output
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "SLOTS", "QUEUE", "CACHE", "HIT", "UNTIL"]
    assert "100% CPU" in row and "4096" in row and "4 minutes from now" in row
    assert " 3/4 " in row and " 2 " in row and " 88% " in row


def test_ps_without_usage_fields_shows_dashes(llm, daemon):
    daemon.loaded = [{**tag_entry(), "size_vram": 0, "context_length": 4096}]  # an Ollama-shaped answer
    row = llm("ps").stdout.splitlines()[1]
    assert row.split()[7:10] == ["-", "-", "-"]  # name, id, size (2), processor (2), context


def test_ps_json_has_the_usage_fields(llm, daemon):
    daemon.loaded = [{**tag_entry(), "parallel": 4, "slots_in_use": 1, "queue_depth": 0, "cache_hit_rate": None}]
    models = json.loads(llm("ps", "--json").stdout)["models"]
    assert {k: models[0][k] for k in ("parallel", "slots_in_use", "queue_depth", "cache_hit_rate")} == {
        "parallel": 4, "slots_in_use": 1, "queue_depth": 0, "cache_hit_rate": None}


def test_pull_shows_progress_and_ends_with_success(llm, daemon):
    result = llm("pull", "new-model")
    assert result.exit_code == 0, result.output
    assert "pulling manifest" in result.stderr
    assert f"pulling {DIGEST[7:19]}" in result.stderr and "100%" in result.stderr
    assert result.stderr.rstrip().endswith("success")
    assert daemon.bodies("/api/pull") == [{"model": "new-model", "stream": True}]


def test_push_shows_progress_and_sends_insecure(llm, daemon):
    result = llm("push", "127.0.0.1:5000/me/tiny:v1", "--insecure")
    assert result.exit_code == 0, result.output
    assert f"pushing {DIGEST[7:19]}" in result.stderr
    assert result.stderr.rstrip().endswith("success")
    assert daemon.bodies("/api/push") == [{"model": "127.0.0.1:5000/me/tiny:v1", "insecure": True, "stream": True}]


def test_pull_in_stream_error_fails(llm, daemon):
    daemon.stream_error = "pull model manifest: file does not exist"
    result = llm("pull", "nope")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: pull model manifest: file does not exist"


def test_cp(llm, daemon):
    result = llm("cp", MODEL, "copy:v1")
    assert result.stdout == f"copied '{MODEL}' to 'copy:v1'\n"
    assert daemon.bodies("/api/copy") == [{"source": MODEL, "destination": "copy:v1"}]


def test_rm_deletes_each_model(llm, daemon):
    daemon.loaded = [tag_entry()]
    result = llm("rm", "tiny")
    assert result.stdout == "deleted 'tiny'\n"
    assert daemon.bodies("/api/delete") == [{"model": "tiny"}]
    assert daemon.bodies("/api/generate") == [], "the daemon itself stops runners of deleted models"


def test_stop_sends_an_empty_generate_with_keep_alive_zero(llm, daemon):
    assert llm("stop", MODEL).exit_code == 0
    assert daemon.bodies("/api/generate") == [{"model": MODEL, "prompt": "", "keep_alive": 0, "stream": False}]


def test_stop_unknown_model(llm, daemon):
    result = llm("stop", "ghost")
    assert (result.exit_code, result.stderr) == (1, 'Error: couldn\'t find model "ghost" to stop\n')


# -- create ---------------------------------------------------------------------------------------


class FakeModelfile:
    def __init__(self, from_, **fields):
        self.from_ = from_
        self.parameters = fields.get("parameters", {})
        self.template = fields.get("template")
        self.system = fields.get("system")
        self.messages = fields.get("messages", [])
        self.license = fields.get("license", [])
        self.adapters = fields.get("adapters", [])
        self.drafts = fields.get("drafts", [])


@pytest.fixture
def modelfile_parser(monkeypatch):
    """Stands in for llmhost.registry.modelfile until (or unless) the real parser is importable."""
    import importlib

    try:
        importlib.import_module("llmhost.registry.modelfile")
        return None
    except ImportError:
        pass
    import sys
    import types

    def parse_modelfile(text):
        fields, parameters = {}, {}
        for line in text.splitlines():
            word, _, rest = line.partition(" ")
            if word == "FROM":
                fields["from_"] = rest
            elif word == "PARAMETER":
                name, value = rest.split(None, 1)
                parameters[name] = float(value) if name == "temperature" else value
            elif word == "SYSTEM":
                fields["system"] = rest
        return FakeModelfile(fields.pop("from_", None), parameters=parameters, **fields)

    module = types.ModuleType("llmhost.registry.modelfile")
    module.parse_modelfile = parse_modelfile
    monkeypatch.setitem(sys.modules, "llmhost.registry.modelfile", module)


def _write_model(tmp_path, data=b"GGUF" + b"\0" * 100_000):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.gguf").write_bytes(data)
    (tmp_path / "Modelfile").write_text("FROM ./weights/model.gguf\nPARAMETER temperature 0.2\nSYSTEM be brief\n")
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def test_create_uploads_a_missing_blob_and_sends_files(llm, daemon, modelfile_parser, tmp_path):
    digest, data = _write_model(tmp_path)
    result = llm("create", "mine", "-f", str(tmp_path / "Modelfile"))
    assert result.exit_code == 0, result.output
    assert daemon.blobs[digest] == data
    assert daemon.paths("POST").count(f"/api/blobs/{digest}") == 1
    body = daemon.bodies("/api/create")[0]
    assert body["files"] == {"model.gguf": digest} and "from" not in body
    assert body["system"] == "be brief" and body["parameters"] == {"temperature": 0.2}
    assert result.stderr.rstrip().endswith("success")


def test_create_skips_the_upload_when_the_daemon_has_the_blob(llm, daemon, modelfile_parser, tmp_path):
    digest, data = _write_model(tmp_path)
    daemon.blobs[digest] = data
    assert llm("create", "mine", "-f", str(tmp_path / "Modelfile")).exit_code == 0
    assert f"/api/blobs/{digest}" in daemon.paths("HEAD")
    assert f"/api/blobs/{digest}" not in daemon.paths("POST")


def test_create_from_an_existing_model_sends_from(llm, daemon, modelfile_parser, tmp_path):
    (tmp_path / "Modelfile").write_text(f"FROM {MODEL}\nSYSTEM be brief\n")
    assert llm("create", "mine", "-f", str(tmp_path / "Modelfile")).exit_code == 0
    body = daemon.bodies("/api/create")[0]
    assert body["from"] == MODEL and "files" not in body


def test_create_with_a_missing_gguf_fails_before_calling_the_daemon(llm, daemon, modelfile_parser, tmp_path):
    (tmp_path / "Modelfile").write_text("FROM ./nope.gguf\n")
    result = llm("create", "mine", "-f", str(tmp_path / "Modelfile"))
    assert (result.exit_code, result.stderr) == (1, "Error: FROM ./nope.gguf: no such file\n")
    assert daemon.bodies("/api/create") == []


def test_create_with_a_draft_model_is_refused_before_anything_is_uploaded(llm, daemon, tmp_path):
    digest, _ = _write_model(tmp_path)
    (tmp_path / "Modelfile").write_text("FROM ./weights/model.gguf\nDRAFT ./weights/model.gguf\n")
    result = llm("create", "mine", "-f", str(tmp_path / "Modelfile"))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: DRAFT ./weights/model.gguf: DRAFT models are not supported yet")
    assert "draft_num_predict" in result.stderr
    assert daemon.bodies("/api/create") == [] and digest not in daemon.blobs


def test_version_names_the_daemons_version(llm, daemon):
    assert llm("--version").stdout == "llmhost version is 0.1.0\n"


def test_version_without_a_daemon_warns(llm, env):
    result = llm("--version")
    assert result.exit_code == 0 and "could not connect" in result.stdout


def test_serve_help_lists_every_variable(llm):
    from llmhost.config import VARIABLES

    text = llm("serve", "--help").stdout
    assert all(var.name in text for var in VARIABLES)


def test_serve_with_a_bad_setting_fails_in_one_line(llm, env, monkeypatch):
    monkeypatch.setenv("LLMHOST_NUM_PARALLEL", "zero")
    result = llm("serve")
    assert (result.exit_code, result.stderr.count("\n")) == (1, 1)
    assert result.stderr.startswith("Error: invalid LLMHOST_NUM_PARALLEL='zero'")
