"""Failures end as one ``Error:`` line and a non-zero exit; start-up stays light; autostart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmhost.api.client import Client
from llmhost.cli import daemon_process
from llmhost.cli.app import app
from llmhost.errors import DaemonUnreachable
from tests.support.processes import free_port

FAKE_DAEMON = Path(__file__).parents[1] / "support" / "fake_daemon.py"
ROOT = Path(__file__).resolve().parents[2]


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    return lines[0]


def test_unknown_model(llm, daemon):
    assert _one_error_line(llm("show", "ghost")) == "Error: model 'ghost' not found"


def test_no_daemon_and_no_autostart(llm, env):
    line = _one_error_line(llm("list"))
    assert "could not connect to the llmhost daemon" in line and str(env) in line


def test_autostart_that_fails_points_at_the_log(env, monkeypatch, tmp_path):
    monkeypatch.setattr(daemon_process, "DAEMON_ARGV", (sys.executable, "-c", "print('no luck'); raise SystemExit(3)"))
    result = CliRunner().invoke(app, ["list"])
    line = _one_error_line(result)
    assert "exited with status 3" in line
    log = Path(line.rsplit("see ", 1)[1])
    assert log.is_relative_to(tmp_path) and "no luck" in log.read_text()


def test_busy_daemon(llm, daemon):
    daemon.status_error = (503, "server busy, please try again.  maximum pending requests exceeded")
    assert _one_error_line(llm("run", "tiny", "hi")).startswith("Error: server busy")


def test_bad_setting_is_reported(llm, monkeypatch):
    monkeypatch.setenv("LLMHOST_HOST", "127.0.0.1:notaport")
    assert _one_error_line(llm("list")).startswith("Error: invalid LLMHOST_HOST=")


def test_autostart_starts_a_daemon_and_waits_for_it(env, tmp_path):
    client = Client(str(env), f"127.0.0.1:{free_port()}")
    process = daemon_process.ensure_daemon(
        client, argv=[sys.executable, str(FAKE_DAEMON), str(env)], log=tmp_path / "daemon.log"
    )
    try:
        assert process is not None and process.poll() is None
        assert os.getsid(process.pid) != os.getsid(0)  # its own session: Ctrl+C here does not reach it
        assert client.version() == {"version": "0.32.15", "llmhost": "0.1.0"}
        assert daemon_process.ensure_daemon(client) is None  # already running: nothing started
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def test_autostart_gives_up_after_the_timeout(env, tmp_path):
    client = Client(str(env), f"127.0.0.1:{free_port()}")
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    with pytest.raises(DaemonUnreachable, match="did not answer within 1s"):
        process = daemon_process.start_daemon(argv, tmp_path / "daemon.log")
        try:
            daemon_process.wait_for_daemon(client, process, tmp_path / "daemon.log", timeout=1.0)
        finally:
            process.kill()
            process.wait()


@pytest.mark.parametrize("argv", [[], ["--help"]], ids=["import", "help"])
def test_start_up_imports_nothing_heavy(argv):
    code = (
        "import sys\n"
        f"sys.argv = ['llm', *{argv!r}]\n"
        "import llmhost.cli.app as cli\n"
        f"if {bool(argv)}:\n"
        "    try: cli.main()\n"
        "    except SystemExit: pass\n"
        "heavy = ('aiohttp', 'llama_cpp', 'numpy', 'huggingface_hub', 'gguf', 'rich.progress')\n"
        "print(sorted(m for m in sys.modules if m in heavy or m.split('.')[0] in heavy))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_a_server_that_is_not_llmhost_is_not_driven(tmp_path):
    """Ollama on the same port answers `GET /` too; the CLI must say so instead of using it."""
    import http.server
    import threading


    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"Ollama is running")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Client(tmp_path / "absent.sock", f"127.0.0.1:{server.server_port}")
        with pytest.raises(DaemonUnreachable, match="not llmhost"):
            client.heartbeat()
    finally:
        server.shutdown()
        server.server_close()
