"""Flower's console scripts: the ones installed beside this Python, so a venv that is not on PATH still works."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def flower_script(name: str) -> str:
    """`name` next to the running interpreter (the venv's bin/), else as found on PATH, else the bare name."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else (shutil.which(name) or name)


def stop_group(process: subprocess.Popen[bytes], first: signal.Signals) -> None:
    """Send `first` to the process group we started, then SIGKILL if it has not left within 10 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, first)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
