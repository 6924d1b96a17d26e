"""Spawn a real ``python -m llmhost.engine.runner`` and talk to it over its unix socket (sync).

    with RunnerProcess(model_path, tmp_path) as runner:
        runner.health()
        lines = runner.completion({"prompt": "Hi", "options": {"num_predict": 4}})

The process always gets SIGTERM (then SIGKILL) on exit, so no runner outlives its test.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.processes import terminate

SRC = Path(__file__).resolve().parents[2] / "src"


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket."""

    def __init__(self, path: str, timeout: float = 60.0):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class RunnerProcess:
    """A runner subprocess on ``tmp_dir/runner.sock``."""

    def __init__(
        self,
        model: Path | str,
        tmp_dir: Path,
        *,
        ctx_size: int = 512,
        parallel: int = 2,
        threads: int = 1,
        batch: int = 256,
        extra: tuple[str, ...] = (),
    ):
        self.socket_path = str(tmp_dir / "runner.sock")
        self.stderr_path = tmp_dir / "runner.stderr"
        self.args = [
            sys.executable, "-m", "llmhost.engine.runner",
            "--model", str(model), "--socket", self.socket_path,
            "--ctx-size", str(ctx_size), "--parallel", str(parallel),
            "--threads", str(threads), "--batch", str(batch), *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> RunnerProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=err, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"runner exited with {self.proc.returncode}: {self.stderr()}")
            if os.path.exists(self.socket_path):
                try:
                    self.health()
                    return self
                except OSError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(f"runner not ready after {timeout}s: {self.stderr()}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
        return 0 if self.proc is None else terminate(self.proc, timeout)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> RunnerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- HTTP -------------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = UnixHTTPConnection(self.socket_path)
        try:
            payload = None if body is None else json.dumps(body)
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, _parse(resp.getheader("Content-Type", ""), raw)
        finally:
            conn.close()

    def health(self) -> dict:
        status, body = self.request("GET", "/health")
        assert status == 200, body
        return body

    def completion(self, body: dict) -> list[dict]:
        """All NDJSON lines of a completion (asserts HTTP 200)."""
        status, lines = self.request("POST", "/completion", body)
        assert status == 200, lines
        return lines

    def stream(self, body: dict) -> Iterator[dict]:
        """Lines as they arrive; closing the generator closes the connection (cancels)."""
        conn = UnixHTTPConnection(self.socket_path)
        try:
            conn.request("POST", "/completion", body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            while line := resp.readline():
                yield json.loads(line)
        finally:
            conn.close()


def _parse(content_type: str, raw: bytes) -> Any:
    if "ndjson" in content_type:
        return [json.loads(line) for line in raw.splitlines() if line.strip()]
    return json.loads(raw) if raw else None


def text_of(lines: list[dict]) -> str:
    """Concatenated ``content`` of completion lines."""
    return "".join(line.get("content", "") for line in lines)
