"""Simulated devices sign: each has its own identity key, registered on its Device, and its agent signs its
reports as they leave the outbox (fleet/identities.py, agent/online.py)."""

from __future__ import annotations

from typing import Any

from tinymlops.agent.online import OnlineAgent
from tinymlops.fleet.identities import FleetIdentities
from tinymlops.fleet.kubeedge import device_manifest
from tinymlops.fleet.profiles import make_fleet
from tinymlops.gateway.authn import ReportGuard, parse_registry
from tinymlops.report import Report, SignedReport
from tinymlops.signing import IDENTITY_ANNOTATION
from tinymlops_operator.logic.registry import device_identity, registry_bytes


class Agent:
    """Just what OnlineAgent.uplink needs of a DeviceAgent."""

    class caps:  # noqa: N801 - stands in for the DeviceCapabilities attribute
        name = "cam-1"


def wire(inferences: int, phase: str = "Running") -> dict[str, Any]:
    return Report(device="cam-1", namespace="edge", fleet="cams", device_class="rpi4", arch="aarch64",
                  phase=phase, menu_version=1, sent_at=float(inferences), inferences=inferences).to_json()


def test_each_device_has_one_key_of_its_own() -> None:
    identities = FleetIdentities()
    assert identities.key("a") is identities.key("a") and identities.public_base64("a") != identities.public_base64("b")
    assert len(identities) == 2


def test_the_device_object_registers_the_key_its_agent_signs_with() -> None:
    identities = FleetIdentities()
    (caps,) = make_fleet(1)
    manifest = device_manifest(caps, index=0, namespace="edge", gateway_url="http://g", fleet="cams",
                               identity=identities.public_base64(caps.name))
    identity = device_identity("edge", caps.name, manifest["metadata"]["annotations"])
    assert identity is not None and IDENTITY_ANNOTATION in manifest["metadata"]["annotations"]
    registry = parse_registry(registry_bytes([identity]))
    signed = identities.signer(caps.name).sign(Report(
        device=caps.name, namespace="edge", fleet="cams", device_class=caps.device_class, arch=caps.arch,
        phase="Pending", menu_version=0, sent_at=1.0))
    assert isinstance(ReportGuard(registry).admit(signed.to_json(), where="r"), Report)
    assert "annotations" not in device_manifest(caps, index=0, namespace="edge", gateway_url="http://g",
                                                fleet="cams")["metadata"]


def test_the_outbox_drains_signed_envelopes_numbered_in_order_that_the_gateway_takes() -> None:
    identities = FleetIdentities()
    online = OnlineAgent(Agent(), namespace="edge", fleet="cams", node=None,  # type: ignore[arg-type]
                         signer=identities.signer("cam-1"))
    online.outbox.add(wire(1, "Pending"))
    online.outbox.add(wire(2))
    online.outbox.add(wire(3))  # same state: merged into the previous one before it is signed
    first = online.uplink()
    online.outbox.add(wire(4, "Failed"))
    sent = first + online.uplink()
    assert len(sent) == 3 and all(SignedReport.is_envelope(item) for item in sent)
    opened = [SignedReport.from_json(item).open() for item in sent]
    assert [r.seq for r in opened] == [1, 2, 3] and opened[1].inferences == 5
    guard = ReportGuard({("edge", "cam-1"): identities.key("cam-1").public_key()})
    assert all(isinstance(guard.admit(item, where="r"), Report) for item in sent)
    assert guard.admit(sent[0], where="r").reason == "replay"  # type: ignore[union-attr]


def test_without_a_signer_reports_leave_as_they_are() -> None:
    online = OnlineAgent(Agent(), namespace="edge", fleet="cams", node=None)  # type: ignore[arg-type]
    online.outbox.add(wire(1))
    assert online.uplink() == [wire(1)]
