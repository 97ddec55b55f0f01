"""Flower's console scripts: the ones installed beside this Python, so a venv that is not on PATH still works."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def flower_script(name: str) -> str:
    """`name` next to the running interpreter (the venv's bin/), else as found on PATH, else the bare name."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else (shutil.which(name) or name)
