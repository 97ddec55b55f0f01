"""Attribute a suspect model: whose watermark, if anyone's, does it carry?

For every record in the registry whose base model has the suspect's architecture: realign the suspect's
hidden units onto the base model (`realign`), read the code bits out of the watermarked layer and count the
errors against the licensee's code (white-box), and run the licensee's trigger set through the suspect with
onnxruntime and count the labels it gives (black-box).  Each count has an exact p-value (`stats`); a licensee
is named only when its best p-value, corrected for every test made, is at most `stats.ALPHA`.  A model no
record's watermark is in, or one checked with another key, names nobody.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.errors import ArchitectureMismatchError, WatermarkError
from tinymlops.runners import Runner
from tinymlops.watermark import ecc, marks, stats
from tinymlops.watermark.realign import realigned
from tinymlops.watermark.registry import LicenseeRecord, WatermarkRegistry
from tinymlops.watermark.weights import WeightLayer, architecture_difference, load_onnx, weight_layers

TESTS_PER_RECORD = 2  # white-box and black-box


@dataclass(frozen=True)
class LicenseeTest:
    """The two tests of one licensee's record on the suspect."""

    licensee: str
    base_sha256: str
    bit_errors: int
    code_bits: int
    bit_error_rate: float
    bit_p_value: float  # chance that a model without this watermark reads as close to the code
    payload_recovered: bool  # BCH decoding of the read-out bits gives exactly the licensee's payload
    trigger_hits: int
    triggers: int
    trigger_accuracy: float
    trigger_p_value: float  # chance that a model not trained on the triggers gives as many of their labels
    chance_match_probability: float  # the better p-value, corrected for every test made on the suspect
    trigger_error: str | None = None  # why the suspect could not be run on the triggers (then p is 1)


@dataclass(frozen=True)
class Attribution:
    licensee: str | None
    tests: list[LicenseeTest]
    chance_match_probability: float  # of the named licensee's match; of the closest one when nobody is named
    tests_made: int
    alpha: float = stats.ALPHA

    def to_json(self) -> dict[str, Any]:
        return {"licensee": self.licensee, "identified": self.licensee is not None,
                "chance_match_probability": self.chance_match_probability, "alpha": self.alpha,
                "tests_made": self.tests_made, "tests": [asdict(test) for test in self.tests]}


def _next_rows(layers: list[WeightLayer], index: int) -> NDArray[np.float32] | None:
    """The next layer's weights as one row per unit of layer `index`, when it takes those units one by one."""
    if index + 1 < len(layers) and layers[index + 1].shape[0] == layers[index].shape[1]:
        return layers[index + 1].matrix
    return None


def _trigger_hits(suspect: bytes, mark: marks.Mark) -> tuple[int, str | None]:
    try:
        scores = Runner.load(suspect).many(mark.trigger_x)
    except Exception as exc:  # a suspect onnxruntime cannot run still has weights to read: only this test is lost
        return 0, f"{type(exc).__name__}: {str(exc)[:200]}"
    predicted = np.asarray(scores).reshape(len(mark.trigger_x), -1).argmax(axis=1)
    return int(np.sum(predicted == mark.trigger_y)), None


def _test(record: LicenseeRecord, key: bytes, suspect: bytes, layer: NDArray[np.float32],
          tests_made: int) -> LicenseeTest:
    p = record.parameters
    mark = marks.derive_mark(key, record.licensee, record.trigger_seed, layer_size=layer.size,
                             triggers=int(p["triggers"]), classes=int(p["classes"]), low=float(p["input_low"]),
                             high=float(p["input_high"]), input_shape=tuple(int(d) for d in p["input_shape"]))
    values = marks.projections(mark.projection, layer)
    errors = marks.bit_errors(mark.code, values)
    decoded = ecc.decode(marks.read_bits(values))
    hits, trigger_error = _trigger_hits(suspect, mark)
    bit_p = stats.bit_match_p_value(errors, marks.CODE_BITS)
    trigger_p = stats.trigger_p_value(hits, len(mark.trigger_y), int(p["classes"])) if trigger_error is None else 1.0
    return LicenseeTest(
        licensee=record.licensee, base_sha256=record.base_sha256, bit_errors=errors, code_bits=marks.CODE_BITS,
        bit_error_rate=errors / marks.CODE_BITS, bit_p_value=bit_p,
        payload_recovered=decoded is not None and marks.payload_hex(decoded) == record.payload,
        trigger_hits=hits, triggers=len(mark.trigger_y), trigger_accuracy=hits / len(mark.trigger_y),
        trigger_p_value=trigger_p, chance_match_probability=stats.corrected(min(bit_p, trigger_p), tests_made),
        trigger_error=trigger_error)


def verify(suspect: bytes, *, key: bytes, registry: WatermarkRegistry, what: str = "suspect") -> Attribution:
    """Test `suspect` against every record of a base model with its architecture; name at most one licensee."""
    suspect_layers = weight_layers(load_onnx(suspect, what=what))
    records = registry.records()
    if not records:
        raise WatermarkError("the watermark registry holds no records: nothing to attribute to")
    readable: list[tuple[LicenseeRecord, NDArray[np.float32]]] = []
    differences: list[str] = []
    for base_sha256 in sorted({r.base_sha256 for r in records}):
        base_layers = weight_layers(load_onnx(registry.base_model(base_sha256), what=f"base {base_sha256[:12]}"))
        difference = architecture_difference(base_layers, suspect_layers)
        if difference is not None:
            differences.append(f"against base model {base_sha256[:12]}…, {difference}")
            continue
        aligned: dict[int, NDArray[np.float32]] = {}
        for record in (r for r in records if r.base_sha256 == base_sha256):
            index = int(record.parameters["layer"])
            if index not in aligned:
                aligned[index] = realigned(base_layers[index].matrix,
                                           np.nan_to_num(suspect_layers[index].matrix),
                                           _next_rows(base_layers, index), _next_rows(suspect_layers, index))
            readable.append((record, aligned[index]))
    if not readable:
        raise ArchitectureMismatchError(f"{what}: another architecture than every base model in the registry: "
                                        + "; ".join(differences))
    tests_made = TESTS_PER_RECORD * len(readable)
    tests = [_test(record, key, suspect, layer, tests_made) for record, layer in readable]
    best = min(tests, key=lambda test: test.chance_match_probability)
    named = best.licensee if best.chance_match_probability <= stats.ALPHA else None
    return Attribution(named, sorted(tests, key=lambda test: test.chance_match_probability),
                       best.chance_match_probability, tests_made)
