"""The watermark registry: which licensee got which watermark in which base model, in the artifact store.

One record per licensee and base model (a new model revision is watermarked again for the same licensee),
all in one JSON document (`layout.WATERMARK_RECORDS_KEY`), plus each base model by digest, which verification
realigns suspects against.  Never the owner's key: with the key, the payload, projection and trigger set of a
record are recomputed (`keys`); without it, a record tells nothing an attacker can use to forge or erase a mark.
Writes read, merge and replace the document: writers take turns (the CLI runs one embed, the operator builds
one licensee at a time).  Nothing is ever replaced: a different record for the same licensee and base model is
refused, the same one again is a no-op.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from tinymlops.errors import RegistryConflictError, SpecError, UnknownLicenseeError, WatermarkError
from tinymlops.layout import WATERMARK_RECORDS_KEY, watermark_base_key
from tinymlops.store import ArtifactStore, check_digest, sha256_bytes

KIND = "tinymlops-watermark-registry"
VERSION = 1
# A Kubernetes label value's shape: licensees are named in EdgeModel/DeviceFleet specs and fleet metrics.
LICENSEE_PATTERN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")


def check_licensee(licensee: str) -> str:
    if not LICENSEE_PATTERN.fullmatch(licensee):
        raise SpecError(f"licensee {licensee!r}: not a valid id (1-63 letters, digits, '.', '_' or '-', starting "
                        "and ending with a letter or digit)")
    return licensee


@dataclass(frozen=True)
class LicenseeRecord:
    """What was embedded for one licensee in one base model: enough, with the key, to test any suspect."""

    licensee: str
    base_sha256: str  # sha256 of the base model's ONNX bytes
    payload: str  # the 64-bit payload, hex (BCH-encoded into the code bits; HMAC(key, licensee), not the key)
    trigger_seed: int
    watermarked_sha256: str  # sha256 of the watermarked ONNX bytes
    parameters: dict[str, Any] = field(default_factory=dict)  # embed parameters (`embed.Parameters`), layer, data range

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any, *, where: str) -> LicenseeRecord:
        try:
            record = cls(licensee=str(raw["licensee"]), base_sha256=str(raw["base_sha256"]),
                         payload=str(raw["payload"]), trigger_seed=int(raw["trigger_seed"]),
                         watermarked_sha256=str(raw["watermarked_sha256"]), parameters=dict(raw["parameters"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WatermarkError(f"{where}: not a watermark record ({type(exc).__name__}: {exc})") from exc
        return record


class WatermarkRegistry:
    """Licensee records and base models in an artifact store (`--registry DIR` is a DirectoryStore)."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    def records(self) -> list[LicenseeRecord]:
        if not self.store.exists(WATERMARK_RECORDS_KEY):
            return []
        where = WATERMARK_RECORDS_KEY
        try:
            document = json.loads(self.store.get(WATERMARK_RECORDS_KEY))
        except ValueError as exc:
            raise WatermarkError(f"{where}: not JSON ({exc})") from exc
        if not isinstance(document, dict) or document.get("kind") != KIND or not isinstance(
                document.get("records"), list):
            raise WatermarkError(f"{where}: not a watermark registry (kind {KIND!r} with a records list)")
        if document.get("version") != VERSION:
            raise WatermarkError(f"{where}: registry version {document.get('version')!r}, this tinymlops reads "
                                 f"{VERSION}")
        return [LicenseeRecord.from_json(raw, where=f"{where} records[{index}]")
                for index, raw in enumerate(document["records"])]

    def licensees(self) -> list[str]:
        return sorted({record.licensee for record in self.records()})

    def base_model_digests(self) -> list[str]:
        return sorted({record.base_sha256 for record in self.records()})

    def record(self, licensee: str, base_sha256: str | None = None) -> LicenseeRecord:
        """The licensee's record for `base_sha256`; without one, its only record or else its latest."""
        mine = [r for r in self.records() if r.licensee == licensee
                and (base_sha256 is None or r.base_sha256 == base_sha256)]
        if not mine:
            known = ", ".join(self.licensees()) or "none yet"
            model = f" for base model {base_sha256[:12]}…" if base_sha256 else ""
            raise UnknownLicenseeError(f"licensee {licensee!r}: no watermark record{model} in the registry "
                                       f"(licensees: {known})")
        return mine[-1]

    def add(self, record: LicenseeRecord) -> None:
        """Append `record`; the same record again is a no-op, a different one for its licensee and base refused."""
        check_licensee(record.licensee)
        records = self.records()
        for existing in records:
            if (existing.licensee, existing.base_sha256) == (record.licensee, record.base_sha256):
                if existing == record:
                    return
                raise RegistryConflictError(
                    f"licensee {record.licensee!r} already has a watermark in base model {record.base_sha256[:12]}… "
                    f"(watermarked model {existing.watermarked_sha256[:12]}…, trigger seed {existing.trigger_seed}); "
                    "the registry never replaces a record: name the new copy another licensee id")
        document = {"kind": KIND, "version": VERSION, "records": [r.to_json() for r in [*records, record]]}
        self.store.put(WATERMARK_RECORDS_KEY, json.dumps(document, indent=1, sort_keys=True).encode())

    def keep_base(self, model: bytes) -> str:
        """Store the base model by digest (once) and return the digest."""
        digest = sha256_bytes(model)
        if not self.store.exists(watermark_base_key(digest)):
            self.store.put(watermark_base_key(digest), model)
        return digest

    def base_model(self, sha256: str) -> bytes:
        key = watermark_base_key(sha256)
        if not self.store.exists(key):
            raise WatermarkError(f"{key}: the base model {sha256[:12]}… its records name is not in the registry")
        data = self.store.get(key)
        check_digest(data, sha256, what=key, named_by="its name")
        return data
