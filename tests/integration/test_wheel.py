"""The wheel, as a user gets it: built from the sdist, installed in a fresh venv, run from an empty directory.

The default tests install the wheel with --no-deps into a new venv that sees this venv's site-packages through
a .pth file (installing every dependency from an index takes minutes): what is checked is the wheel itself
(its files, its metadata, that nothing reaches back into the source tree). TINYMLOPS_FRESH_INSTALL=agent
(comma-separated extras; `stack` too, for the whole demo) also resolves the wheel's own dependencies into a
venv of nothing else, the way `pip install tinymlops[agent]` does on a device; .ci/run sets it for `agent`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.unit.dependencies import NOT_ON_A_DEVICE, PROJECT, ROOT, normalize, requirements, runtime_extras
from tinymlops.cli import COMMANDS

pytestmark = pytest.mark.integration

FRESH_INSTALL_ENV = "TINYMLOPS_FRESH_INSTALL"
SHIPPED = {"crds": "tinymlops/_data/crds", "examples": "tinymlops/_data/examples"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build`: the sdist, then the wheel from the unpacked sdist, as PyPI users get them."""
    out = tmp_path_factory.mktemp("dist")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    print(f"built in {time.monotonic() - started:.1f} s")
    (built,) = out.glob("*.whl")
    return built


def _venv(path: Path, *, with_pip: bool) -> Path:
    subprocess.run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(path)], check=True)
    return path / "bin" / "python"


def _purelib(python: Path) -> Path:
    return Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())


def _clean_env() -> dict[str, str]:
    """This environment without what would put the source tree on sys.path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")}


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)


WHERE = """
import json, sys, tinymlops
from tinymlops.bundled import crd_dir, examples_dir
from tinymlops.stack.local import crd_paths
print(json.dumps({"path": sys.path, "package": tinymlops.__file__, "crds": str(crd_dir()),
                  "examples": str(examples_dir()), "crd_files": [p.name for p in crd_paths()]}))
"""


def _assert_runs_from_the_install(python: Path, cwd: Path) -> None:
    result = _run([str(python), "-c", WHERE], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    where = json.loads(result.stdout)
    site = _purelib(python)
    # The test venv's site-packages (the dependencies, via the .pth) may sit inside the checkout, as .venv does.
    dependencies = Path(sysconfig.get_paths()["purelib"]).resolve()
    source = [p for p in where["path"]
              if p and Path(p).resolve().is_relative_to(ROOT) and Path(p).resolve() != dependencies]
    assert not source, where["path"]
    for key in ("package", "crds", "examples"):
        assert Path(where[key]).is_relative_to(site), f"{key}: {where[key]} is not in the install {site}"
    expected = sorted(p.name for p in (ROOT / "crds").rglob("*.yaml"))
    assert sorted(where["crd_files"]) == expected


# --- the wheel's contents ------------------------------------------------------------------------------------


def test_the_wheel_carries_crds_and_examples_as_they_are_in_the_repository(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for source, target in SHIPPED.items():
            files = [p for p in (ROOT / source).rglob("*") if p.is_file()]
            assert files
            for file in files:
                member = f"{target}/{file.relative_to(ROOT / source).as_posix()}"
                assert member in names, f"the wheel lacks {member}"
                assert archive.read(member) == file.read_bytes(), f"{member} differs from {file}"
        assert {"tinymlops/py.typed", "tinymlops_pipelines/compiled/variants_pipeline.yaml"} <= names
        assert not [n for n in names if n.startswith(("tests/", "crds/", "examples/")) or "__pycache__" in n]


def test_the_wheel_declares_each_extra(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert metadata["License-Expression"] == "Apache-2.0"
    declared: dict[str | None, set[str]] = {}
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        extra = next((e for e in runtime_extras() + ["test"]
                      if requirement.marker and requirement.marker.evaluate({"extra": e})), None)
        declared.setdefault(extra, set()).add(str(Requirement(line.split(";")[0])))
    for extra in [None, *runtime_extras(), "test"]:
        assert declared.get(extra, set()) == {str(r) for r in requirements(extra)}, extra
    assert set(metadata.get_all("Provides-Extra") or []) == {*runtime_extras(), "test"}
    device = {normalize(Requirement(r).name) for r in declared[None] | declared.get("agent", set())}
    assert device & NOT_ON_A_DEVICE == set()


# --- run from an empty directory -----------------------------------------------------------------------------


def test_the_installed_wheel_runs_the_demo_from_an_empty_directory(wheel: Path, tmp_path: Path) -> None:
    python = _venv(tmp_path / "venv", with_pip=False)
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                                "--no-index", str(wheel)], env=_clean_env(), capture_output=True, text=True,
                               timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    # The dependencies are this venv's; tinymlops itself only the wheel's (its own site-packages comes first).
    # Written after the install (and pip run without PYTHONPATH): pip would otherwise find this venv's or the
    # checkout's tinymlops metadata and install nothing.
    (_purelib(python) / "test-venv-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_runs_from_the_install(python, empty)
    tinymlops = python.parent / "tinymlops"
    for name, _, _ in COMMANDS:
        assert _run([str(tinymlops), name, "--help"], empty).returncode == 0, name
    started = time.monotonic()
    demo = _run([str(tinymlops), "demo", "--devices", "10"], empty, timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    print(f"demo --devices 10 from the wheel: {time.monotonic() - started:.1f} s")
    report = json.loads((empty / "demo-report.json").read_text())
    # The emulated Cortex-M4 boards join when this machine has the Arm toolchain, qemu and TVM (else: skipped).
    boards = len(report["fleet"]["far_edge"]["devices"])
    assert report["fleet"]["converged"] == report["fleet"]["devices"] == 10 + boards, report["fleet"]


def _fresh_install(wheel: Path, tmp_path: Path, extra: str) -> Path:
    wanted = {e.strip() for e in os.environ.get(FRESH_INSTALL_ENV, "").split(",") if e.strip()}
    if extra not in wanted:
        pytest.skip(f"installs from the package index (minutes): set {FRESH_INSTALL_ENV}={extra}")
    python = _venv(tmp_path / "venv", with_pip=True)
    started = time.monotonic()
    installed = _run([str(python), "-m", "pip", "install", "--quiet", f"{wheel}[{extra}]"], tmp_path, timeout=1800)
    assert installed.returncode == 0, installed.stderr[-3000:]
    print(f"pip install tinymlops[{extra}] into a fresh venv: {time.monotonic() - started:.1f} s")
    return python


def _distributions(python: Path) -> set[str]:
    listed = _run([str(python), "-c", "import importlib.metadata as m; "
                   "print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"], python.parent)
    return {normalize(name) for name in listed.stdout.split()}


def test_a_fresh_agent_install_has_only_what_a_device_needs(wheel: Path, tmp_path: Path) -> None:
    python = _fresh_install(wheel, tmp_path, "agent")
    assert _distributions(python) & NOT_ON_A_DEVICE == set()
    empty = tmp_path / "empty"
    (empty / "state").mkdir(parents=True)
    tinymlops = python.parent / "tinymlops"
    status = _run([str(tinymlops), "agent", "status", "--state-dir", "state"], empty)
    assert (status.returncode, status.stdout.strip()) == (0, "no variant installed"), status.stderr
    imports = _run([str(python), "-c", "import tinymlops.agent.install, tinymlops.agent.online, tinymlops.runners"],
                   empty)
    assert imports.returncode == 0, imports.stderr[-3000:]
    # What a device lacks, it names: the stack the demo runs is an extra.
    demo = _run([str(tinymlops), "demo", "--devices", "1"], empty)
    assert demo.returncode == 1 and "pip install 'tinymlops[stack]'" in demo.stderr, demo.stderr[-3000:]


def test_a_fresh_stack_install_runs_the_demo(wheel: Path, tmp_path: Path) -> None:
    python = _fresh_install(wheel, tmp_path, "stack")
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_runs_from_the_install(python, empty)
    demo = _run([str(python.parent / "tinymlops"), "demo", "--devices", "10"], empty, timeout=900)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert PROJECT in _distributions(python)
