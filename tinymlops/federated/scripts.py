"""Flower's processes: the environment they start in (the scripts beside this Python found first) and how they stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def flower_environment(flwr_home: Path) -> dict[str, str]:
    """The environment of a Flower process we start: its own home, no telemetry, no update check, and the
    interpreter's bin/ first on PATH: our commands name Flower's scripts by bare name, and Flower's processes
    start further ones the same way (the SuperLink spawns `flower-superexec`), while a venv need not be on PATH
    (a fresh clone's `make test` runs `.venv/bin/python` without activating it)."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "FLWR_HOME": str(flwr_home), "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1"}


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
