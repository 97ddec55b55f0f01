"""Fixtures the emulator integration modules share; each module defines its own `stack` (its own LocalStack)."""

from __future__ import annotations

import pytest

from tinymlops.errors import PrometheusMissingError
from tinymlops.stack.kube import Kube
from tinymlops.stack.local import LocalStack
from tinymlops.stack.prometheus import find_prometheus


@pytest.fixture(scope="module")
def kube(stack: LocalStack) -> Kube:
    """The API client of the module's stack."""
    assert stack.kube is not None
    return stack.kube


@pytest.fixture(scope="module")
def prometheus_bin() -> str:
    """Debian's prometheus, or a skip naming how to get it."""
    try:
        return find_prometheus()
    except PrometheusMissingError as exc:
        pytest.skip(str(exc))
