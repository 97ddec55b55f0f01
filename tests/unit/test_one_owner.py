"""Each concept has one owner: a search of the source finds one definition (issue 11).

Static checks over the source tree (ast, no imports), so they hold for modules whose extras
are not installed: the error taxonomy, the store layout, the report's limits, the digest check.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (ROOT / "tinymlops", ROOT / "operator" / "tinymlops_operator", ROOT / "pipelines" / "tinymlops_pipelines")

# Exceptions that are not domain errors, and why (tinymlops/errors.py says the same).
NOT_DOMAIN_ERRORS = {
    "tinymlops/stack/emulator/errors.py": {"ApiError"},  # the emulated Kubernetes API's Status, a wire type
    "tinymlops/commands/outputs.py": {"OutputRefused"},  # a click exception: the CLI's own usage error
}
STORE_KEY = re.compile(r"(^|/)(menu|plan)\.(json|sig)$|(^|/)blobs/?$|/blobs/|(^|/)keys/$")


def sources() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted(package.rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), filename=str(path))


def docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (they may describe the layout in prose)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_every_error_class_is_in_the_taxonomy() -> None:
    stray = []
    for name, tree in sources():
        if name == "tinymlops/errors.py":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [ast.unparse(base) for base in node.bases]
            if any(re.search(r"(Error|Exception)$", base) for base in bases) and (
                    node.name not in NOT_DOMAIN_ERRORS.get(name, set())):
                stray.append(f"{name}: class {node.name}({', '.join(bases)})")
    assert not stray, "error classes belong in tinymlops/errors.py under TinyMLOpsError:\n" + "\n".join(stray)


def test_every_error_derives_from_the_base_class() -> None:
    from tinymlops import errors

    classes = [value for value in vars(errors).values() if isinstance(value, type) and issubclass(value, Exception)]
    assert len(classes) > 10
    outside = [cls.__name__ for cls in classes if not issubclass(cls, errors.TinyMLOpsError)]
    assert not outside


def test_store_keys_are_spelled_only_in_the_layout_module() -> None:
    spelled = []
    for name, tree in sources():
        if name == "tinymlops/layout.py":
            continue
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
                    and STORE_KEY.search(node.value)):
                spelled.append(f"{name}:{node.lineno}: {node.value!r}")
    assert not spelled, "build store keys with tinymlops.layout:\n" + "\n".join(spelled)


@pytest.mark.parametrize("constant", ["PHASES", "OFFLINE", "MAX_LATENCIES", "SCHEMA_VERSION"])
def test_the_report_contract_is_defined_once(constant: str) -> None:
    owners = [
        name for name, tree in sources() for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == constant for t in node.targets)
    ]
    assert owners == ["tinymlops/report.py"]


def test_one_digest_comparison() -> None:
    """Digests are compared by `store.digest_matches` (and its raising form `check_digest`) only."""
    comparing = []
    for name, tree in sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any("sha256_bytes(" in ast.unparse(side)
                                                     for side in [node.left, *node.comparators]):
                comparing.append(f"{name}:{node.lineno}")
    assert comparing == ["tinymlops/store.py:" + str(_digest_matches_line())]


def _digest_matches_line() -> int:
    tree = ast.parse((ROOT / "tinymlops" / "store.py").read_text())
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "digest_matches")
    compare = next(node for node in ast.walk(function) if isinstance(node, ast.Compare))
    return compare.lineno
