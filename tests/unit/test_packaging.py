"""The extras of pyproject.toml and where an install finds the CRDs and the examples, without building anything.

tests/integration/test_wheel.py builds the wheel and runs it from a fresh venv; here the declared extras are
held against tinymlops/extras.py and against the code each extra is meant for, by running that code with only
the extra's dependencies importable (tests/unit/dependencies.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.dependencies import (
    NOT_ON_A_DEVICE,
    PROJECT,
    ROOT,
    distributions,
    import_names,
    normalize,
    requirements,
    run_with_only,
    runtime_extras,
)
from tinymlops import bundled
from tinymlops.cli import COMMANDS
from tinymlops.extras import COMMAND_EXTRAS, EXTRA_INCLUDES, EXTRA_MODULES, extra_providing, modules_of

# What each extra is for: modules that must import, and a command that must run, with only its dependencies.
PARTS = {
    "agent": (("tinymlops.cli", "tinymlops.commands.agent", "tinymlops.agent.install", "tinymlops.agent.online",
               "tinymlops.runners", "tinymlops.personalise", "tinymlops.agent.personalise"),
              ("agent", "status", "--state-dir", "{scratch}")),
    "gateway": (("tinymlops.gateway.app", "tinymlops.commands.gateway"), ("gateway", "run", "--help")),
    "pipelines": (("tinymlops.variants", "tinymlops.model", "sklearn.neural_network", "tinymlops_pipelines.pipeline",
                   "tinymlops_pipelines.runner", "tinymlops.commands.variants"),
                  ("keys", "generate", "--out", "{scratch}/keys")),
    "operator": (("tinymlops_operator.main", "tinymlops_operator.runtime", "tinymlops.commands.operator_cmd"),
                 ("operator", "run", "--help")),
    "stack": (("tinymlops.stack.demo", "tinymlops.stack.local", "tinymlops.stack.kube", "tinymlops.kube.cel", "celpy",
               "tinymlops.commands.demo", "tinymlops.commands.cluster", "tinymlops.commands.devices"),
              ("cluster", "up", "--help")),
    "watermark": (("tinymlops.watermark", "tinymlops.watermark.realign", "tinymlops.commands.watermark"),
                  ("watermark", "verify", "--help")),
}


def test_extras_py_names_the_modules_pyproject_declares() -> None:
    installed = import_names()
    for extra in runtime_extras():
        reqs = requirements(extra)
        includes = {e for r in reqs if normalize(r.name) == PROJECT for e in r.extras}
        assert includes == set(EXTRA_INCLUDES.get(extra, ())), f"{extra}: pyproject includes {sorted(includes)}"
        provided: set[str] = set()
        for requirement in reqs:
            if normalize(requirement.name) == PROJECT:
                continue
            names = installed.get(normalize(requirement.name))
            assert names, f"{requirement.name} ({extra}) is not installed in the test venv"
            assert names & set(EXTRA_MODULES[extra]), f"{extra}: extras.py names no module of {requirement.name}"
            provided |= names
        assert set(EXTRA_MODULES[extra]) <= provided, f"{extra}: extras.py names modules pyproject does not bring"
    assert set(EXTRA_MODULES) == set(runtime_extras())


def test_a_device_install_has_none_of_the_heavy_parts() -> None:
    assert requirements("agent") == [], "the agent extra is the core install"
    assert distributions(["agent"]) & NOT_ON_A_DEVICE == set()
    assert modules_of("agent") == ()
    # and each heavy part really is in some extra, so `all` (what the Makefile installs) has it
    assert distributions(["all"]) >= NOT_ON_A_DEVICE


def test_all_is_every_runtime_extra() -> None:
    assert set(EXTRA_INCLUDES["all"]) == set(runtime_extras()) - {"all"}


def test_every_command_names_its_extra() -> None:
    assert set(COMMAND_EXTRAS) == {name for name, _, _ in COMMANDS}
    assert set(COMMAND_EXTRAS.values()) <= set(EXTRA_MODULES)
    assert extra_providing("kmock", preferred="pipelines") == "stack"  # the command's extra only if it brings it
    assert extra_providing("rich", preferred="stack") == "stack"
    assert extra_providing("tvm") == "tvm" and extra_providing("numpy") is None


@pytest.mark.parametrize("extra", sorted(PARTS))
def test_each_extra_is_enough_for_its_part(extra: str) -> None:
    modules, command = PARTS[extra]
    result = run_with_only([extra], modules, command)
    assert result.returncode == 0, f"tinymlops[{extra}] is not enough:\n{result.stdout}\n{result.stderr[-3000:]}"


@pytest.mark.parametrize(("command", "hidden", "extra"), [
    (("demo", "--devices", "1", "--workdir", "{scratch}/w", "--report", "{scratch}/r.json"), ("kmock",), "stack"),
    (("cluster", "up", "--workdir", "{scratch}/w"), ("kopf",), "stack"),
    (("operator", "run"), ("kopf",), "operator"),
    (("keys", "generate", "--out", "{scratch}/keys"), ("rich",), "pipelines"),
])
def test_a_command_without_its_extra_names_it(command: tuple[str, ...], hidden: tuple[str, ...], extra: str) -> None:
    result = run_with_only(["all"], (), command, hidden=hidden)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"pip install 'tinymlops[{extra}]'" in result.stdout and hidden[0] in result.stdout, result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(("module", "hidden", "extra"), [
    ("tinymlops.stack.local", "kmock", "stack"),
    ("tinymlops_operator.main", "kopf", "operator"),
    ("tinymlops_pipelines.runner", "kfp", "pipelines"),
    ("tinymlops.variants", "onnx", "pipelines"),
    ("tinymlops.model", "sklearn", "pipelines"),
])
def test_importing_a_part_without_its_extra_names_it(module: str, hidden: str, extra: str) -> None:
    result = run_with_only(["all"], (module,), hidden=(hidden,))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tinymlops.errors.MissingExtraError:") and hidden in last, result.stderr[-2000:]
    assert f"pip install 'tinymlops[{extra}]'" in last


# --- where the CRDs and the examples are --------------------------------------------------------------------


def test_a_checkout_reads_crds_and_examples_in_place() -> None:
    # The tests run from the repository (and its editable install has no copies): the originals, nothing else.
    assert bundled.crd_dir() == ROOT / "crds"
    assert bundled.examples_dir() == ROOT / "examples"


def test_the_stack_and_the_demo_ask_the_resolver() -> None:
    from tinymlops.stack.demo import DemoOptions
    from tinymlops.stack.local import crd_paths

    assert crd_paths() and all(p.is_relative_to(bundled.crd_dir()) for p in crd_paths())
    assert DemoOptions(root=Path("x")).examples == bundled.examples_dir()


def _layout(tmp_path: Path, *, installed: bool, checkout: bool) -> Path:
    package = tmp_path / "site" / "tinymlops"
    package.mkdir(parents=True)
    if installed:
        for name in ("crds", "examples"):
            (package / "_data" / name).mkdir(parents=True)
    (tmp_path / "site" / "crds").mkdir()  # a stray top-level folder, as another distribution might leave
    if checkout:
        (tmp_path / "site" / "pyproject.toml").write_text("[project]\nname = 'tinymlops'\n")
    return package


def test_an_install_reads_its_own_copy_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = _layout(tmp_path, installed=True, checkout=True)
    monkeypatch.setattr(bundled, "PACKAGE", package)
    assert bundled.crd_dir() == package / "_data" / "crds"
    assert bundled.examples_dir() == package / "_data" / "examples"


def test_a_folder_beside_an_install_is_not_taken_for_the_crds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundled, "PACKAGE", _layout(tmp_path, installed=False, checkout=False))
    with pytest.raises(FileNotFoundError, match=r"crds/ is neither in the installed package"):
        bundled.crd_dir()
    monkeypatch.setattr(bundled, "PACKAGE", _layout(tmp_path / "repo", installed=False, checkout=True))
    assert bundled.crd_dir() == tmp_path / "repo" / "site" / "crds"

