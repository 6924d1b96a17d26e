"""A real, small file system for full-disk tests: a 4 MiB tmpfs mounted for one test.

Import the fixture where it is used:

    from tests.support.tmpfs import fill, small_disk  # noqa: F401

Mounting needs root (or CAP_SYS_ADMIN); elsewhere the tests that use it are skipped, saying why.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SIZE = "4m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """The mount point of a fresh 4 MiB tmpfs, unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("full-disk test needs a small tmpfs, and there is no `mount` command here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"full-disk test needs a small tmpfs and mounting is not permitted here: "
                    f"{done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        # Lazy, so a file a test left open cannot keep the mount (and the test's tmp dir) busy.
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def fill(directory: Path) -> None:
    """Use up every free byte of the file system ``directory`` is on."""
    with open(directory / "filler", "wb", buffering=0) as f:
        try:
            while f.write(bytes(1 << 16)):
                pass
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
