"""Guards on the repository shape that a refactor could silently break."""

import importlib
import operator
from pathlib import Path

import click

from tests.unit.cli_tree import leaf_commands

ROOT = Path(__file__).resolve().parents[2]


def test_import_operator_is_still_the_stdlib() -> None:
    # `operator/` holds our kopf app but must never become a package that shadows the stdlib.
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert not (ROOT / "pipelines" / "__init__.py").exists()
    assert operator.__file__ is None or "site-packages" not in operator.__file__
    assert operator.add(2, 3) == 5 and hasattr(operator, "itemgetter")
    assert Path(importlib.import_module("operator").__spec__.origin or "built-in").parent != ROOT / "operator"


def test_operator_package_is_importable_beside_the_stdlib_module() -> None:
    module = importlib.import_module("tinymlops_operator.main")
    assert Path(module.__file__).is_relative_to(ROOT / "operator")


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_no_top_level_folder_shadows_an_installed_package() -> None:
    # Tests run with the repository root on sys.path: a folder named like a dependency's import name (say
    # `docker/` for Dockerfiles) becomes a namespace package that hides it, and kfp.local then breaks.
    import importlib.metadata

    ours = {"tinymlops"}
    # Import names of what is installed, and of optional packages our dependencies try to import when present
    # (kfp.local imports `docker` for its DockerRunner).
    optional = {"docker", "kubernetes_asyncio", "boto3", "minio", "google"}
    imported = (set(importlib.metadata.packages_distributions()) | optional) - ours
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert (folders - _build_outputs(folders)) & imported == set()


def _build_outputs(folders: set[str]) -> set[str]:
    """The folders .gitignore leaves out: what `pip install .` writes (build/, which is also the name of the
    `build` package the tests use), not part of the repository's shape."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return set()
    ignored = subprocess.run(["git", "check-ignore", *sorted(f"{name}/" for name in folders)], cwd=ROOT,
                             capture_output=True, text=True).stdout
    return {line.rstrip("/") for line in ignored.split()}


def test_every_command_has_help() -> None:
    from click.testing import CliRunner

    from tinymlops.cli import COMMANDS, main

    runner = CliRunner()
    for name, _, _ in COMMANDS:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, (name, result.output)
    simulate = runner.invoke(main, ["devices", "simulate", "--help"])
    assert simulate.exit_code == 0 and "--gateway" in simulate.output
    missing = runner.invoke(main, ["devices", "simulate", "--pubkey", "/nonexistent.pem", "--gateway", "http://x"])
    assert missing.exit_code == 2 and "/nonexistent.pem" in missing.output


def test_every_environment_variable_is_listed_in_help() -> None:
    from click.testing import CliRunner

    from tinymlops.cli import main

    runner = CliRunner()
    listed = set()
    for path, command in leaf_commands():
        help_text = runner.invoke(main, [*path, "--help"], terminal_width=200).output
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
                assert param.show_envvar, (path, param.name)
                for name in names:
                    assert f"env var: {name}" in help_text, (path, name)
                    listed.add(name)
    # What configures a command through the environment (the operator's settings are checked in test_cli).
    assert {"TINYMLOPS_STORE", "TINYMLOPS_KEY_DIR", "TINYMLOPS_PROMETHEUS_BIN", "KUBECONFIG",
            "TINYMLOPS_SIGNING_KEY", "TINYMLOPS_METRICS_PORT"} <= listed


def test_no_command_reads_the_environment_behind_its_options() -> None:
    # An os.environ read in a command is configuration --help cannot show: it belongs in an option's envvar.
    import re

    for module in (ROOT / "tinymlops" / "commands").glob("*.py"):
        for match in re.finditer(r"os\.(?:environ\.get|getenv)\(\s*\"([A-Z_]+)\"", module.read_text()):
            assert match.group(1) == "KUBERNETES_SERVICE_HOST", (module.name, match.group(1))
