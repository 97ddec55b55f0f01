"""examples/wasm/: the committed sample modules are exactly what their C sources build to."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "wasm"
MODULES = ("pre_digits.wasm", "post_topk.wasm")
# Debian packages: clang (the wasm32 target is built in) and lld (wasm-ld).
TOOLS = {"clang": "clang", "wasm-ld": "lld"}


def test_committed_modules_match_their_sources(tmp_path: Path) -> None:
    missing = [f"{tool} (apt-get install {package})" for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"cannot rebuild the sample modules: {', '.join(missing)} not installed")
    for source in (*EXAMPLES.glob("*.c"), *EXAMPLES.glob("*.h"), EXAMPLES / "Makefile"):
        shutil.copy(source, tmp_path)
    subprocess.run(["make", "-s", "-C", str(tmp_path)], check=True, capture_output=True)
    for name in MODULES:
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), (
            f"examples/wasm/{name} is stale: run `make wasm-examples` and commit it")


def test_every_committed_module_has_its_source() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.wasm")) == sorted(MODULES)
    for name in MODULES:
        assert (EXAMPLES / name).with_suffix(".c").is_file()
