"""What pyproject.toml declares per extra, and an import check that runs code with only an extra's dependencies.

The check hides every declared distribution an install of `tinymlops[extra]` would lack (in a subprocess, by
a finder that refuses its modules and an `importlib.util.find_spec` that does not see them: "not
installed"), so it shows without a fresh venv whether that extra is enough for the code it is meant for.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "tinymlops"
# Distributions a device must never get: the operator, the pipelines, the training and the emulator.
NOT_ON_A_DEVICE = {"kfp", "kopf", "kubernetes", "scikit-learn", "skl2onnx", "kmock", "onnx", "apache-tvm"}


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(extra: str | None) -> list[Requirement]:
    """The requirements pyproject.toml lists for an extra (None: the core)."""
    project = pyproject()["project"]
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


def runtime_extras() -> list[str]:
    """Every extra but `test`, which is the developer's, not a part of tinymlops."""
    return [extra for extra in pyproject()["project"]["optional-dependencies"] if extra != "test"]


def distributions(extras: Iterable[str]) -> set[str]:
    """The distributions `pip install tinymlops[extras]` asks for directly, self-references followed."""
    wanted: set[str] = {normalize(r.name) for r in requirements(None)}
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in requirements(extra):
            if normalize(requirement.name) == PROJECT:
                pending += sorted(requirement.extras)
            else:
                wanted.add(normalize(requirement.name))
    return wanted


def import_names() -> dict[str, set[str]]:
    """Installed distribution -> the top-level modules it provides."""
    names: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            names.setdefault(normalize(dist), set()).add(module)
    return names


def with_dependencies(names: Iterable[str]) -> set[str]:
    """`names` and, as installed here, what they require in turn (kopf brings jsonpatch itself, say)."""
    found: set[str] = set()
    pending = [normalize(n) for n in names]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        try:
            lines = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in lines:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(normalize(requirement.name))
    return found


def hidden_modules(extras: Iterable[str]) -> list[str]:
    """Top-level modules that only distributions an install of `tinymlops[extras]` lacks (and that some extra
    declares) provide."""
    everything = distributions(runtime_extras())
    left_out = everything - with_dependencies(distributions(extras))
    return sorted(
        module for module, dists in importlib.metadata.packages_distributions().items()
        if {normalize(d) for d in dists} <= left_out
    )


IMPORT_CHECK = """
import importlib, importlib.abc, importlib.util, json, sys, tempfile
hidden, modules, command = json.loads(sys.argv[1])
hidden_set = set(hidden)

class Absent(importlib.abc.MetaPathFinder):
    # Not installed, as far as import can tell. Not a None in sys.modules: libraries probe sys.modules for
    # optional array types (scipy's array-api-compat reads sys.modules["torch"].Tensor) and trip over None.
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden_set:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Absent())
real_find_spec = importlib.util.find_spec

def find_spec(name, package=None):
    return None if name.partition(".")[0] in hidden_set else real_find_spec(name, package)

importlib.util.find_spec = find_spec  # ...and as far as importlib.util.find_spec can tell
for module in modules:
    importlib.import_module(module)
if command:
    from click.testing import CliRunner
    from tinymlops.cli import main
    with tempfile.TemporaryDirectory() as scratch:
        result = CliRunner().invoke(main, [arg.replace("{scratch}", scratch) for arg in command])
    print(result.output, end="")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    sys.exit(result.exit_code)
"""


def run_with_only(extras: Iterable[str], modules: Sequence[str] = (), command: Sequence[str] = (),
                  hidden: Iterable[str] = ()) -> subprocess.CompletedProcess[str]:
    """Import `modules`, then run `tinymlops COMMAND` ({scratch} is an empty directory), in a Python that has
    only what `tinymlops[extras]` installs (and without `hidden` besides)."""
    payload = [sorted({*hidden_modules(extras), *hidden}), list(modules), list(command)]
    return subprocess.run([sys.executable, "-c", IMPORT_CHECK, json.dumps(payload)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
