"""Fixtures the emulator integration modules share; each module defines its own `stack` (its own LocalStack)."""

from __future__ import annotations

import pytest

from tinymlops.stack.kube import Kube
from tinymlops.stack.local import LocalStack


@pytest.fixture(scope="module")
def kube(stack: LocalStack) -> Kube:
    """The API client of the module's stack."""
    assert stack.kube is not None
    return stack.kube
