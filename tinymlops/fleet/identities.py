"""Each simulated device's identity: an Ed25519 key made once, registered on its Device, signing its reports.

A real device gets its identity key at provisioning (`tinymlops keys device`) and
keeps its sequence numbers on disk (`agent.identity.SequenceFile`); whoever
creates its KubeEdge `Device` puts the public half in the `IDENTITY_ANNOTATION`.
The simulator does the same for its devices: one `FleetIdentities` is shared by
the code that writes the Device objects (`kubeedge.device_manifest`) and the
simulator that runs the agents, so the key the operator registers is the key
the agent signs with.  Keys are made on first use (about 25 µs each: 10,000
devices take a quarter of a second) and live in memory only, as the simulated
devices do; their sequence numbers count in memory (`MemorySequence`).
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.agent.identity import MemorySequence, ReportSigner
from tinymlops.signing import public_key_base64


class FleetIdentities:
    def __init__(self) -> None:
        self._keys: dict[str, Ed25519PrivateKey] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, device: str) -> Ed25519PrivateKey:
        """The device's identity key, made the first time it is asked for."""
        key = self._keys.get(device)
        if key is None:
            key = self._keys[device] = Ed25519PrivateKey.generate()
        return key

    def public_base64(self, device: str) -> str:
        """The value of the device's identity annotation: its raw public key in base64."""
        return public_key_base64(self.key(device).public_key())

    def signer(self, device: str) -> ReportSigner:
        """What the device's agent signs its reports with: its key, numbering from 1 in memory."""
        return ReportSigner(self.key(device), MemorySequence())
