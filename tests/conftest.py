"""Test tiers: unit and integration run by default; e2e needs a real cluster and is opt-in.

Nothing here probes for cluster tools at import time: the decision is made from
the command line and the environment only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from tinymlops.stack.writes import OPERATOR_CLIENTS

E2E_ENV = "TINYMLOPS_E2E_KUBECONFIG"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--with-e2e", action="store_true", default=False,
                     help=f"run tests/e2e against the cluster of $KUBECONFIG (or ${E2E_ENV})")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--with-e2e") or os.environ.get(E2E_ENV):
        return
    skip = pytest.mark.skip(reason=f"needs a real cluster: pass --with-e2e or set {E2E_ENV}")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    """Poll `check` until it returns something truthy (and return that), or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


# --- RBAC coverage: every request the operator makes is one the chart's ClusterRole allows ------------------


@pytest.fixture(scope="session")
def chart_cluster_role() -> dict[tuple[str, str], set[str]]:
    """(group, resource) → verbs the Helm chart grants the operator, rendered by Helm's own engine."""
    from pathlib import Path

    import yaml

    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (test extra) renders the chart")
    chart_dir = Path(__file__).resolve().parents[1] / "helm" / "tinymlops"
    with helm.Chart.load(chart_dir) as chart:
        manifests = chart.render(None, name="tinymlops", namespace="tinymlops", is_install=True)
    role = next(doc for template, text in manifests.items() if not template.endswith("NOTES.txt")
                for doc in yaml.safe_load_all(text) if doc and doc.get("kind") == "ClusterRole")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def denied_operator_requests(
    requests: dict[tuple[str, str, str, str], int], granted: dict[tuple[str, str], set[str]]
) -> list[str]:
    """The operator's requests (from `ApiEmulator.requests`) the chart's ClusterRole would refuse."""
    return sorted(f"{verb} {group or 'core'}/{resource} ({client})"
                  for (client, verb, group, resource) in requests
                  if client in OPERATOR_CLIENTS and verb not in granted.get((group, resource), set()))
