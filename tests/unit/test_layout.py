"""Guards on the repository shape that a refactor could silently break."""

import importlib
import operator
from pathlib import Path

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
