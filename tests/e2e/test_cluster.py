"""On a real cluster with TinyMLOps installed (`helm install`, see README): the examples become Ready.

Opt-in: `make e2e` (or pytest --with-e2e) uses $KUBECONFIG; TINYMLOPS_E2E_KUBECONFIG names another.
The sample model must be in the operator's store at store://sources/digits/ (README, "On a cluster").
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tinymlops.stack.kube import Kube, load_manifests

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
API = "tinymlops.io/v1alpha1"


def test_examples_reach_ready_on_a_real_cluster() -> None:
    kubeconfig = os.environ.get("TINYMLOPS_E2E_KUBECONFIG") or os.environ.get("KUBECONFIG")
    if not kubeconfig:
        pytest.fail("set KUBECONFIG or TINYMLOPS_E2E_KUBECONFIG to the cluster to test")
    kube = Kube(Path(kubeconfig).expanduser())
    try:
        for manifest in load_manifests(sorted((ROOT / "examples").glob("*.yaml"))):
            kube.apply(manifest)
        deadline = time.monotonic() + 600
        while True:
            model = kube.get(API, "EdgeModel", "default", "digits") or {}
            fleet = kube.get(API, "DeviceFleet", "default", "digits-fleet") or {}
            if (model.get("status") or {}).get("phase") == "Ready" and (fleet.get("status") or {}).get("phase"):
                break
            assert time.monotonic() < deadline, f"not Ready in time: {model.get('status')}"
            time.sleep(2)
        assert fleet["status"]["phase"] in ("Pending", "Progressing", "Paused", "Healthy", "Degraded")
    finally:
        kube.close()
