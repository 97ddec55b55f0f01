"""Test tiers: unit and integration run by default; e2e needs a real cluster and is opt-in.

Nothing here probes for cluster tools at import time: the decision is made from
the command line and the environment only.
"""

from __future__ import annotations

import os

import pytest

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
