"""Which reports the gateway believes: registered devices, valid signatures, fresh sequence numbers (pure).

With a registry of device identity keys (namespace and name → Ed25519 public
key), the gateway takes a report only inside a `SignedReport` envelope
(`tinymlops/report.py`) and only when, in this order:

- the envelope and the report in it are well formed, and the report carries a
  sequence number (`malformed` otherwise);
- its device is in the registry (`unknown-device`);
- that device's key signed exactly the bytes received (`bad-signature`: also an
  unsigned report, one signed by another key, and one with any byte changed);
- its `seq` is above the last one accepted from that device (`replay`);
- the device has not used up its share (`rate-limited`, `ratelimit.py`).

Edge nodes store and forward reports while their link is down; they relay the
envelope as it is and cannot change a byte the signature covers.  Sequence
numbers must arrive in increasing order: a report overtaken by a newer one of the
same device (a relay that reorders) is refused as a replay, because "above the
last accepted" is the one rule that needs no window of remembered numbers.  The
agent's outbox drains oldest first, so an in-order relay loses nothing; a retried
upload of a batch that did arrive is refused as replays, and those reports were
counted the first time.

The last accepted numbers are kept in memory (`ReportGuard.last_seq`): a
restarted gateway starts again from zero for every device.  The registry may be
replaced while the gateway runs (`ReportGuard.replace_registry`, see
`registry.py`): a device that stays registered with the same key keeps its last
number; one whose key changed (re-provisioned) starts again from zero.

The registry comes from a JSON file (`gateway run --registry FILE`, read by
`parse_registry`): `{"devices": [{"namespace": ..., "name": ..., "public_key":
"<PEM of the device's identity.pub.pem>"}]}`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tinymlops.errors import ConfigError, InvalidReportError, SignatureError
from tinymlops.gateway.ratelimit import RateLimiter
from tinymlops.report import Report, SignedReport
from tinymlops.signing import load_public_key

MALFORMED, UNKNOWN_DEVICE, BAD_SIGNATURE, REPLAY, RATE_LIMITED = REASONS = (
    "malformed", "unknown-device", "bad-signature", "replay", "rate-limited",
)

DeviceId = tuple[str, str]  # (namespace, name), as the device's KubeEdge Device object is named
Registry = Mapping[DeviceId, Ed25519PublicKey]


@dataclass(frozen=True)
class Refusal:
    """Why a report is not taken: one of REASONS, and a message naming the report and what is wrong.

    `device` and `fleet`: whom the refused report claims to come from, when it could be read that far
    (None for a malformed one).  A claim, not a proof: good for telling an operator which device keeps
    failing, never for counting anything as that device's."""

    reason: str
    error: str
    device: DeviceId | None = None
    fleet: str | None = None


def authenticate(raw: Any, registry: Registry, last_seq: Mapping[DeviceId, int], *, where: str) -> Report | Refusal:
    """The report in envelope `raw` when its device's key signed it and its seq is new; else why not."""
    if not SignedReport.is_envelope(raw):
        if isinstance(raw, Mapping):
            return _unsigned(raw, where)
        return Refusal(MALFORMED, f"{where}: is not a JSON object")
    try:
        signed = SignedReport.from_json(raw, where=where)
        report = signed.open(where=where)
    except InvalidReportError as exc:
        return Refusal(MALFORMED, str(exc))
    if report.seq < 1:
        return Refusal(MALFORMED, f"{where}.seq: a signed report needs a sequence number >= 1")
    device = (report.namespace, report.device)
    named = f"{report.namespace}/{report.device}"
    key = registry.get(device)
    if key is None:
        return Refusal(UNKNOWN_DEVICE, f"{where}: device {named} has no registered identity key", device,
                       report.fleet)
    try:
        signed.verify(key, where=f"{where} from {named}")
    except SignatureError as exc:
        return Refusal(BAD_SIGNATURE, str(exc), device, report.fleet)
    last = last_seq.get(device, 0)
    if report.seq <= last:
        return Refusal(REPLAY, f"{where}.seq: {report.seq} is not above {last}, the last accepted from {named} "
                               "(a replay, or a report overtaken by a newer one)", device, report.fleet)
    return report


def _unsigned(raw: Mapping[str, Any], where: str) -> Refusal:
    """A plain report where a signed one is due: named after the device it claims, when it names one."""
    message = f"{where}: unsigned; this gateway takes signed reports only"
    try:
        report = Report.from_json(raw, where=where)
    except InvalidReportError:
        return Refusal(BAD_SIGNATURE, message)
    return Refusal(BAD_SIGNATURE, f"{message} (from {report.namespace}/{report.device})",
                   (report.namespace, report.device), report.fleet)


class ReportGuard:
    """The gateway's door for reports once it has a registry: authenticate, rate-limit, remember the seq."""

    def __init__(self, registry: Registry, *, limiter: RateLimiter | None = None) -> None:
        self.registry = dict(registry)
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.last_seq: dict[DeviceId, int] = {}  # only registered devices: bounded by the registry
        self._seq_keys = {device: _raw(key) for device, key in self.registry.items()}  # whose key last_seq trusts

    def admit(self, raw: Any, *, where: str) -> Report | Refusal:
        verdict = authenticate(raw, self.registry, self.last_seq, where=where)
        if isinstance(verdict, Refusal):
            return verdict
        device = (verdict.namespace, verdict.device)
        if not self.limiter.allow(device):
            return Refusal(RATE_LIMITED, f"{where}: device {verdict.namespace}/{verdict.device} sends more than "
                                         f"{self.limiter.rate:g} reports per second (burst {self.limiter.burst:g})",
                           device, verdict.fleet)
        self.last_seq[device] = verdict.seq
        return verdict

    def replace_registry(self, registry: Registry) -> None:
        """Take a new registry.  A device whose key changed (re-provisioned) starts its sequence again; one
        that left keeps its last number, so a report captured before it left cannot be replayed once it is
        back with the same key (memory: one number per device ever registered, as the registry bounds it)."""
        for device, key in registry.items():
            raw = _raw(key)
            if self._seq_keys.get(device, raw) != raw:
                self.last_seq.pop(device, None)
            self._seq_keys[device] = raw
        for device in self.registry.keys() - registry.keys():
            self.limiter.forget(device)
        self.registry = dict(registry)


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def parse_registry(data: bytes, *, source: str = "registry") -> dict[DeviceId, Ed25519PublicKey]:
    """The device registry in `data` (JSON, see the module's docstring); ConfigError names the bad entry."""
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"{source}: not JSON ({exc})") from exc
    devices = document.get("devices") if isinstance(document, Mapping) else None
    if not isinstance(devices, list):
        raise ConfigError(f"{source}: must be an object with a 'devices' list")
    registry: dict[DeviceId, Ed25519PublicKey] = {}
    for index, entry in enumerate(devices):
        where = f"{source}: devices[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: is not an object")
        namespace, name, pem = entry.get("namespace"), entry.get("name"), entry.get("public_key")
        if not (isinstance(namespace, str) and namespace and isinstance(name, str) and name):
            raise ConfigError(f"{where}: needs a namespace and a name (strings)")
        if not isinstance(pem, str):
            raise ConfigError(f"{where}.public_key: must be the device's identity public key (PEM text)")
        if (namespace, name) in registry:
            raise ConfigError(f"{where}: {namespace}/{name} is listed twice")
        try:
            registry[namespace, name] = load_public_key(pem.encode(), source=f"{where}.public_key")
        except SignatureError as exc:
            raise ConfigError(str(exc)) from exc
    return registry
