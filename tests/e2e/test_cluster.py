"""On a real cluster (kind, see docs/operations.md, "Try it on kind"): install the chart, apply the examples, and a
DeviceFleet of simulated devices becomes Healthy.

Opt-in: `make e2e` (or pytest --with-e2e) uses $KUBECONFIG; TINYMLOPS_E2E_KUBECONFIG names another.
Needs `kubectl` on PATH, the images in the cluster (`make images`, then `kind load docker-image ...`),
and the gateway reachable from here (kind-config.yaml maps NodePort 30080 to 127.0.0.1:30080;
TINYMLOPS_E2E_GATEWAY overrides). `helm` is used when installed, else the chart is rendered by Helm's
engine (helm-python-sdk) and applied with kubectl. The simulated devices run in this process.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tinymlops"
API = "tinymlops.io/v1alpha1"
RELEASE, NAMESPACE = "tinymlops", "tinymlops"
DEVICES = 20
TIMEOUT_S = 900


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], input=stdin, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = {"gateway": {"service": {"type": "NodePort", "nodePort": 30080}}}
    if image := os.environ.get("TINYMLOPS_E2E_IMAGE"):  # e.g. ghcr.io/tinymlops/tinymlops:dev
        repository, _, tag = image.rpartition(":")
        values["image"] = {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"}
    return values


def install_chart(kubeconfig: Path, work: Path) -> None:
    """CRDs first (server-side: they are large), then the release."""
    for crd in sorted(CHART.glob("crds/*.yaml")) + sorted((ROOT / "crds" / "kubeedge").glob("*.yaml")):
        kubectl(kubeconfig, "apply", "--server-side", "-f", str(crd))
    values_file = work / "values.yaml"
    values_file.write_text(yaml.safe_dump(chart_values()))
    if helm_bin := shutil.which("helm"):
        subprocess.run([helm_bin, "--kubeconfig", str(kubeconfig), "upgrade", "--install", RELEASE, str(CHART),
                        "-n", NAMESPACE, "-f", str(values_file), "--wait", "--timeout", "10m"],
                       check=True, timeout=700)
        return
    helm = pytest.importorskip("helm_python", reason="helm or helm-python-sdk installs the chart")
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(chart_values(), name=RELEASE, namespace=NAMESPACE, is_install=True)
    rendered = "\n---\n".join(text for name, text in manifests.items() if not name.endswith("NOTES.txt"))
    kubectl(kubeconfig, "apply", "--server-side", "-n", NAMESPACE, "-f", "-", stdin=rendered)
    kubectl(kubeconfig, "-n", NAMESPACE, "rollout", "status", f"deployment/{RELEASE}-operator", "--timeout=10m")


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Path, Path]]:
    kubeconfig = os.environ.get("TINYMLOPS_E2E_KUBECONFIG") or os.environ.get("KUBECONFIG")
    if not kubeconfig:
        pytest.fail("set KUBECONFIG or TINYMLOPS_E2E_KUBECONFIG to the cluster to test")
    if shutil.which("kubectl") is None:
        pytest.fail("kubectl is not on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(kubeconfig).expanduser(), Path(tmp)


def test_chart_installs_and_a_fleet_of_simulated_devices_becomes_healthy(cluster: tuple[Path, Path]) -> None:
    import numpy as np

    from tinymlops.fleet import FleetSimulator, make_fleet
    from tinymlops.fleet.identities import FleetIdentities
    from tinymlops.fleet.kubeedge import device_manifest, device_models
    from tinymlops.model.digits import prepare_digits
    from tinymlops.signing import generate_key_pair, load_public_key
    from tinymlops.stack.kube import Kube, load_manifests
    from tinymlops.stack.threads import LoopThread

    kubeconfig, work = cluster
    kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace",
                                                                   "metadata": {"name": NAMESPACE}}))
    private_key, public_key = generate_key_pair(work / "keys")
    kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{RELEASE}-signing-key", "namespace": NAMESPACE},
        "data": {"signing-key.pem": base64.b64encode(private_key.read_bytes()).decode()}}))
    install_chart(kubeconfig, work)

    # The sample model goes into the operator's store, where examples/edgemodel-digits.yaml looks for it.
    digits = prepare_digits(work / "digits")
    pod = kubectl(kubeconfig, "-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=operator",
                  "-o", "jsonpath={.items[0].metadata.name}").strip()
    target = f"{NAMESPACE}/{pod}:/var/lib/tinymlops/store/sources/digits"
    kubectl(kubeconfig, "-n", NAMESPACE, "exec", pod, "-c", "operator", "--", "mkdir", "-p",
            "/var/lib/tinymlops/store/sources/digits")
    for path in (digits.model_path, digits.data_path):
        kubectl(kubeconfig, "cp", "-c", "operator", str(path), f"{target}/{path.name}")

    gateway = os.environ.get("TINYMLOPS_E2E_GATEWAY", "http://127.0.0.1:30080")
    kube = Kube(kubeconfig)
    loop = LoopThread("e2e-fleet").start()
    simulator = None
    try:
        manifests = load_manifests(sorted((ROOT / "examples").glob("*.yaml")))
        fleet = next(m for m in manifests if m["kind"] == "DeviceFleet")
        namespace, name = fleet["metadata"].get("namespace", "default"), fleet["metadata"]["name"]
        kube.apply_all(device_models(namespace))
        devices = make_fleet(DEVICES, prefix="e2e")
        identities = FleetIdentities()
        kube.apply_all(device_manifest(caps, index=i, namespace=namespace, gateway_url=gateway, fleet=name,
                                       identity=identities.public_base64(caps.name))
                       for i, caps in enumerate(devices))
        for manifest in manifests:
            kube.apply(manifest)
        simulator = FleetSimulator(
            devices, identities=identities, namespace=namespace, fleet=name, gateway_url=gateway,
            publisher_key=load_public_key(public_key.read_bytes()),
            samples=np.load(digits.data_path)["x"].astype(np.float32),
        )
        loop.call(simulator.start())
        deadline = time.monotonic() + TIMEOUT_S
        status: dict[str, Any] = {}
        while status.get("phase") != "Healthy":
            assert time.monotonic() < deadline, f"DeviceFleet {namespace}/{name} not Healthy in time: {status}"
            time.sleep(3)
            status = (kube.get(API, "DeviceFleet", namespace, name) or {}).get("status") or {}
        assert status["stableRevision"] == 1 and status["converged"] == status["devices"] > 0
        model = kube.get(API, "EdgeModel", "default", "digits") or {}
        assert (model.get("status") or {}).get("phase") == "Ready"
    finally:
        if simulator is not None:
            loop.call(simulator.stop())
        loop.stop()
        kube.close()
