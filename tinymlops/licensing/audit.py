"""Audits: sampled receipts with Merkle inclusion proofs (pymerkle), and canary inputs the server checks itself.

(a) Receipts.  The server picks k receipts of a sealed interval at random (from its own
nonce, so the device cannot choose) and the device answers each with its bytes and an
RFC 6962 inclusion proof against the checkpoint's signed root.  A device that signed a
root over receipts it does not hold, or whose receipts are malformed in a fraction
`rate` of the interval, passes one sample with probability (1 - rate), all k with
(1 - rate)^k; so k = ceil(ln(1 - confidence) / ln(1 - rate)) samples catch it with
probability >= `confidence` (299 for 1 % at 95 %).  Only hashes travel: never an input.

(b) Canaries.  The server sends inputs of its own, computes their outputs with the
licensed variant and compares the device's: a device that swapped in another model,
or runs none, answers differently.  Only the server's inputs and their outputs travel.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.extras import require_extra
from tinymlops.licensing.chain import RECEIPT_BYTES, VOID, leaf, leaf_hash, leaves
from tinymlops.licensing.checkpoint import Checkpoint

require_extra("licensing", __name__, "pymerkle")

from pymerkle import InclusionProof, InmemoryTree, InvalidProof, verify_inclusion  # noqa: E402


def samples_for(rate: float, confidence: float) -> int:
    """How many receipts to sample so that a fraction `rate` of bad ones is caught with probability `confidence`."""
    if not 0 < rate < 1 or not 0 < confidence < 1:
        raise ValueError(f"rate and confidence must be in (0, 1), got {rate} and {confidence}")
    return math.ceil(math.log(1 - confidence) / math.log(1 - rate))


def detection_probability(rate: float, k: int) -> float:
    return 1 - (1 - rate) ** k


def choose(checkpoint: Checkpoint, k: int, nonce: bytes) -> list[int]:
    """k distinct counters of the checkpoint's interval (all of them when it has fewer), drawn from `nonce`."""
    seed = int.from_bytes(hashlib.sha256(nonce + checkpoint.to_bytes()).digest(), "big")
    counters = range(checkpoint.start + 1, checkpoint.end + 1)
    return sorted(random.Random(seed).sample(counters, min(k, len(counters))))


def answer(checkpoint: Checkpoint, receipts: bytes, counters: Sequence[int]) -> list[dict[str, Any]]:
    """The device's answer: each asked receipt with its inclusion proof (`receipts`: the interval's, in order)."""
    tree = InmemoryTree.init_from_entries(leaves(checkpoint.start + 1, receipts), algorithm="sha256")
    out = []
    for counter in counters:
        index = counter - checkpoint.start
        data = receipts[(index - 1) * RECEIPT_BYTES:index * RECEIPT_BYTES]
        out.append({"counter": counter, "receipt": data.hex(), "proof": tree.prove_inclusion(index).serialize()})
    return out


@dataclass(frozen=True)
class SampleVerdict:
    asked: int
    passed: int
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures and self.passed == self.asked


def verify_answers(checkpoint: Checkpoint, asked: Sequence[int], answers: Sequence[Mapping[str, Any]]) -> SampleVerdict:
    """Check each answered receipt against the checkpoint's signed root; name every failure."""
    by_counter = {a.get("counter"): a for a in answers if isinstance(a, Mapping)}
    failures = []
    for counter in asked:
        got = by_counter.get(counter)
        if got is None:
            failures.append(f"receipt {counter}: not answered")
            continue
        problem = _check_one(checkpoint, counter, got)
        if problem:
            failures.append(f"receipt {counter}: {problem}")
    return SampleVerdict(len(asked), len(asked) - len(failures), failures)


def _check_one(checkpoint: Checkpoint, counter: int, got: Mapping[str, Any]) -> str | None:
    try:
        data = bytes.fromhex(str(got["receipt"]))
        proof = InclusionProof.deserialize(got["proof"])
    except (KeyError, ValueError, TypeError) as exc:
        return f"malformed answer ({exc})"
    if len(data) != RECEIPT_BYTES:
        return f"{len(data)} bytes, a receipt has {RECEIPT_BYTES}"
    if data == VOID:
        return "void (no inference behind it)"
    try:
        verify_inclusion(leaf_hash(leaf(counter, data)), checkpoint.root, proof,
                         index=counter - checkpoint.start, size=checkpoint.count)
    except InvalidProof as exc:
        return f"inclusion proof fails against the signed root ({exc})"
    return None


@dataclass(frozen=True)
class CanaryVerdict:
    inputs: int
    agreeing: int  # same top class as the licensed variant
    max_abs_diff: float
    ok: bool

    def to_json(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "agreeing": self.agreeing, "max_abs_diff": self.max_abs_diff, "ok": self.ok}


def compare_canaries(expected: NDArray[np.float32], got: NDArray[np.float32], *, tolerance: float = 1e-3,
                     min_agreement: float = 0.99) -> CanaryVerdict:
    """The device's canary outputs against the licensed variant's (`expected`, computed by the server).

    The same variant on another CPU differs in rounding only: scores within `tolerance` of the score range
    and the same top class for at least `min_agreement` of the inputs pass; another model does not."""
    if got.shape != expected.shape:
        return CanaryVerdict(len(expected), 0, math.inf, False)
    flat_e, flat_g = expected.reshape(len(expected), -1), got.reshape(len(got), -1)
    agreeing = int((flat_e.argmax(axis=1) == flat_g.argmax(axis=1)).sum())
    diff = float(np.abs(flat_e - flat_g).max()) if flat_e.size else 0.0
    scale = float(np.abs(flat_e).max()) if flat_e.size else 1.0
    ok = diff <= tolerance * max(scale, 1.0) and agreeing >= min_agreement * len(expected)
    return CanaryVerdict(len(expected), agreeing, diff, ok)
