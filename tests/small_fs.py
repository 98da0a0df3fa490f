"""A small, nearly full file system for the disk-full tests: a tmpfs mounted by the test (root only).

Where mounting is not permitted the test is skipped with the reason, except under ``CI=true`` as root, where it must
work (the CI container runs as root), so CI cannot pass by skipping them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["nearly_full_fs"]

_SIZE = 1024 * 1024  # tmpfs counts whole pages: the filler leaves ``free_bytes`` rounded down to 4 KiB


@contextlib.contextmanager
def nearly_full_fs(mount_point: Path, *, free_bytes: int) -> Iterator[Path]:
    """Mount a 1 MiB tmpfs at ``mount_point`` (created) with all but ``free_bytes`` taken by a filler file (outside
    the way: ``.filler``); unmounted afterwards."""
    mount_point.mkdir(parents=True, exist_ok=True)
    reason = None
    if os.geteuid() != 0:
        reason = "mounting the small tmpfs the disk-full tests need takes root"
    else:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={_SIZE},mode=0700", "tmpfs", str(mount_point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            reason = f"mount -t tmpfs was refused here ({done.stderr.strip() or done.returncode})"
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true" and os.geteuid() == 0:
            pytest.fail(reason + " - under CI=true as root the disk-full tests must run")
        pytest.skip(reason)
    try:
        with open(mount_point / ".filler", "wb") as filler:
            filler.write(bytes(_SIZE - free_bytes))
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)
