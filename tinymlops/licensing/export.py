"""The usage export a device hands over for reconciling (`agent receipts --out FILE`), as JSON (pure).

    {"format": "tinymlops.receipts/1", "device": <identity public key, raw base64>,
     "licenses": [<token>...], "checkpoints": <base64 of the 196-byte records>,
     "receipts_first": <counter before the first receipt>, "receipts": <base64 of the 32-byte receipts>}

The checkpoints alone are what a device uploads between audits; the receipts let an
offline reconcile recompute every head and root (and name an edited receipt).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tinymlops.errors import ReceiptsError
from tinymlops.licensing.chain import RECEIPT_BYTES
from tinymlops.licensing.checkpoint import Checkpoint, parse_many
from tinymlops.licensing.reconcile import Receipts

FORMAT = "tinymlops.receipts/1"


@dataclass(frozen=True)
class UsageExport:
    device: str
    licenses: list[str]
    checkpoints: list[Checkpoint]
    receipts: Receipts

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "device": self.device, "licenses": list(self.licenses),
                "checkpoints": base64.b64encode(b"".join(c.to_bytes() for c in self.checkpoints)).decode("ascii"),
                "receipts_first": self.receipts.first,
                "receipts": base64.b64encode(self.receipts.data).decode("ascii")}


def build(device: str, licenses: Sequence[str], checkpoints: bytes, receipts: bytes, first: int = 0) -> UsageExport:
    return UsageExport(device, list(licenses), parse_many(checkpoints), Receipts(first, receipts))


def from_json(document: Any, *, where: str = "usage export") -> UsageExport:
    """The export in `document`; ReceiptsError naming the field that is missing or unreadable."""
    if not isinstance(document, Mapping) or document.get("format") != FORMAT:
        raise ReceiptsError(f"{where}: not a usage export (format is not {FORMAT!r})")
    for name, kind in (("device", str), ("licenses", list), ("checkpoints", str), ("receipts", str),
                       ("receipts_first", int)):
        if not isinstance(document.get(name), kind):
            raise ReceiptsError(f"{where}: {name} missing or not a {kind.__name__}")
    checkpoints = parse_many(_b64(document["checkpoints"], f"{where}: checkpoints"), where=f"{where}: checkpoints")
    receipts = _b64(document["receipts"], f"{where}: receipts")
    if len(receipts) % RECEIPT_BYTES:
        raise ReceiptsError(f"{where}: receipts: {len(receipts)} bytes is not a whole number of "
                            f"{RECEIPT_BYTES}-byte receipts (truncated)")
    if document["receipts_first"] < 0 or not all(isinstance(t, str) for t in document["licenses"]):
        raise ReceiptsError(f"{where}: receipts_first negative or licenses not strings")
    return UsageExport(document["device"], list(document["licenses"]), checkpoints,
                       Receipts(document["receipts_first"], receipts))


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ReceiptsError(f"{where}: not base64 ({exc})") from exc
