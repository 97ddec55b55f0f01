"""Reference histograms: fixed bins from the build's data, and that data's counts in them (pure numpy).

The variant factory calls `build_reference` on the base model's inputs and outputs
over the build's calibration and evaluation data (never device data) and ships
`Monitoring.to_json()` as the signed menu's `monitoring` object:

    {"schema": 1, "rows": N,
     "features": [{"name": "brightness", "edges": [e1, ..., e_{k-1}]}, ...],
     "confidence_edges": [...], "classes": C, "scores": "probabilities" | "logits",
     "reference": {"features": [[k counts], ...], "confidence": [counts], "classes": [C counts]},
     "outputs": {"<variant sha256>": {"confidence": [counts], "classes": [C counts]}, ...}}

A histogram with edges e1 < ... < e_{k-1} has k bins: (-inf, e1], (e1, e2], ...,
(e_{k-1}, +inf), so any value lands somewhere, even far outside the reference.
Edges are quantiles of the reference values (observed values, `inverted_cdf`), deduplicated: a discrete or constant
feature (a blank border pixel, a confidence of exactly 1.0) gets fewer bins, and a
constant one still gets the edge at its value, which separates "as before" from
"above".  The same data gives the same edges (quantiles are deterministic), and a
device counts with `Monitoring.count`, the function the reference counts came from,
so in `histograms` mode the device's counts are exact and a drift score over them
is the score of the raw values in those bins.

Outputs: `confidence` is the top class probability (the scores themselves when they
already are probabilities, their softmax otherwise) and `classes` the argmax; a
single-output model has one class and its raw score as the confidence.  Whether the
scores are probabilities is decided once, by the factory, from the base model's
outputs on the build data (`scores_kind`), and recorded as `scores`: a quantized
variant's uint8 probabilities sum to 1 only within 1/256, and deciding per row would
read them as logits.

Per-variant outputs.  The input features do not depend on the variant a device runs,
but its outputs do: an int8 model's confidences top out at 255/256 where the base's
bins may lie above that.  So `outputs` holds, for each variant the factory could run,
that variant's confidence and class counts on the same data in the same bins, keyed
by `variant_sha256` (the model's own bytes: the plaintext's digest in an encrypted
menu).  A device's window says which variant counted it, and the fleet compares its
outputs with that variant's reference (`merge.py`); a variant without one is compared
with the base's `reference`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.drift.features import extract, feature_names
from tinymlops.errors import IntegrityError

SCHEMA = 1
DEFAULT_BINS = 10
PROBABILITY_ATOL = 1e-3  # how far from 1 a row of probabilities may sum (float32 softmax outputs)
PROBABILITIES, LOGITS = "probabilities", "logits"  # the menu's `scores`: what the model's outputs are
SCORES = (PROBABILITIES, LOGITS)


def variant_sha256(entry: Mapping[str, Any]) -> str:
    """The digest that names a menu entry's model in drift windows and `outputs`: of the model's own bytes, so
    the same model has the same name whether its menu is encrypted (the entry's `sha256` then names the
    ciphertext) or not."""
    encryption = entry.get("encryption")
    if isinstance(encryption, Mapping) and "plaintext_sha256" in encryption:
        return str(encryption["plaintext_sha256"])
    return str(entry["sha256"])


def quantile_edges(values: NDArray[np.floating], bins: int = DEFAULT_BINS) -> tuple[float, ...]:
    """At most `bins - 1` ascending edges at the quantiles of `values` (duplicates removed)."""
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        raise ValueError("no finite values to take quantiles of")
    # Observed values, not interpolations between them: a discrete feature's edges sit on its levels.
    quantiles = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="inverted_cdf")
    return tuple(float(edge) for edge in np.unique(quantiles))


def counts(edges: Sequence[float], values: NDArray[np.floating]) -> NDArray[np.int64]:
    """How many `values` fall in each of the len(edges) + 1 bins (right-closed; NaN in the last bin)."""
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="left")
    return np.bincount(index, minlength=len(edges) + 1).astype(np.int64)


def scores_kind(scores: NDArray[np.floating]) -> str:
    """PROBABILITIES when every row of the base model's `scores` lies in [0, 1] and sums to 1 (within
    PROBABILITY_ATOL), LOGITS otherwise: decided once, over all the build data, never per row."""
    rows = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if rows.shape[1] == 1:
        return PROBABILITIES if bool(np.all((rows >= 0) & (rows <= 1))) else LOGITS
    probabilities = (np.all((rows >= 0) & (rows <= 1))
                     and bool(np.all(np.abs(rows.sum(axis=1) - 1.0) <= PROBABILITY_ATOL)))
    return PROBABILITIES if probabilities else LOGITS


def confidence_and_class(scores: NDArray[np.floating], *, kind: str) -> tuple[NDArray[np.float64],
                                                                              NDArray[np.int64]]:
    """Top-class probability and predicted class of each row of `scores` (samples x classes); `kind` (the menu's
    `scores`) says whether the rows are probabilities already or logits to softmax."""
    if kind not in SCORES:
        raise ValueError(f"scores kind {kind!r} is not one of {', '.join(SCORES)}")
    rows = np.asarray(scores, dtype=np.float64).reshape(len(scores), -1)
    if rows.shape[1] == 1:
        return rows[:, 0], np.zeros(len(rows), dtype=np.int64)
    if kind == PROBABILITIES:
        return rows.max(axis=1), rows.argmax(axis=1).astype(np.int64)
    shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
    softmax = shifted / shifted.sum(axis=1, keepdims=True)
    return softmax.max(axis=1), rows.argmax(axis=1).astype(np.int64)


@dataclass(frozen=True)
class Counts:
    """One set of histograms over a Monitoring's bins: per feature, confidence, classes."""

    features: tuple[NDArray[np.int64], ...]
    confidence: NDArray[np.int64]
    classes: NDArray[np.int64]

    @property
    def rows(self) -> int:
        return int(self.classes.sum())

    def __add__(self, other: Counts) -> Counts:
        return Counts(tuple(a + b for a, b in zip(self.features, other.features, strict=True)),
                      self.confidence + other.confidence, self.classes + other.classes)

    def to_json(self) -> dict[str, Any]:
        return {"features": [c.tolist() for c in self.features], "confidence": self.confidence.tolist(),
                "classes": self.classes.tolist()}


@dataclass(frozen=True)
class Outputs:
    """One variant's output histograms over a Monitoring's bins (the `outputs` of the menu's monitoring)."""

    confidence: NDArray[np.int64]
    classes: NDArray[np.int64]

    def to_json(self) -> dict[str, Any]:
        return {"confidence": self.confidence.tolist(), "classes": self.classes.tolist()}


@dataclass(frozen=True)
class Feature:
    name: str
    edges: tuple[float, ...]


@dataclass(frozen=True)
class Monitoring:
    """A model revision's bins and its reference data's counts in them (the menu's `monitoring`)."""

    features: tuple[Feature, ...]
    confidence_edges: tuple[float, ...]
    classes: int
    reference: Counts
    scores: str = PROBABILITIES  # what the model's outputs are (PROBABILITIES or LOGITS), decided by the factory
    outputs: Mapping[str, Outputs] = field(default_factory=dict)  # variant_sha256 -> that variant's outputs

    @property
    def rows(self) -> int:
        return self.reference.rows

    @property
    def bins(self) -> tuple[int, ...]:
        """The number of bins of each feature histogram, in order."""
        return tuple(len(f.edges) + 1 for f in self.features)

    def empty(self) -> Counts:
        return Counts(tuple(np.zeros(b, dtype=np.int64) for b in self.bins),
                      np.zeros(len(self.confidence_edges) + 1, dtype=np.int64),
                      np.zeros(self.classes, dtype=np.int64))

    def count(self, x: NDArray[np.floating], scores: NDArray[np.floating]) -> Counts:
        """The histograms of a batch of inputs `x` and the model's `scores` for them."""
        matrix = extract(x)
        if matrix.shape[1] != len(self.features):
            raise ValueError(f"inputs give {matrix.shape[1]} features, the menu's monitoring has "
                             f"{len(self.features)}")
        output = self.count_outputs(scores)
        return Counts(tuple(counts(f.edges, matrix[:, i]) for i, f in enumerate(self.features)),
                      output.confidence, output.classes)

    def count_outputs(self, scores: NDArray[np.floating]) -> Outputs:
        """The confidence and class histograms of a batch of the model's `scores`."""
        confidence, predicted = confidence_and_class(scores, kind=self.scores)
        if len(predicted) and int(predicted.max()) >= self.classes:
            raise ValueError(f"the model scores {int(predicted.max()) + 1} classes, the menu's monitoring "
                             f"has {self.classes}")
        return Outputs(counts(self.confidence_edges, confidence),
                       np.bincount(predicted, minlength=self.classes).astype(np.int64))

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "rows": self.rows,
                "features": [{"name": f.name, "edges": list(f.edges)} for f in self.features],
                "confidence_edges": list(self.confidence_edges), "classes": self.classes, "scores": self.scores,
                "reference": self.reference.to_json(),
                "outputs": {sha: output.to_json() for sha, output in sorted(self.outputs.items())}}

    @classmethod
    def from_json(cls, raw: Any, *, what: str = "monitoring") -> Monitoring:
        """The menu's monitoring object, read for the device and the fleet alike; IntegrityError naming the field
        that does not fit its bins (the menu is signed: a malformed one is a factory bug, not a device's lie)."""
        if not isinstance(raw, Mapping):
            raise IntegrityError(f"{what}: is not an object")
        try:
            features = tuple(Feature(str(f["name"]), _edges(f["edges"], f"{what}.features[{i}].edges"))
                             for i, f in enumerate(raw["features"]))
            confidence_edges = _edges(raw["confidence_edges"], f"{what}.confidence_edges")
            classes = int(raw["classes"])
            scores = raw["scores"]
            if scores not in SCORES:
                raise IntegrityError(f"{what}.scores: {str(scores)[:40]!r} is not one of {', '.join(SCORES)}")
            reference = raw["reference"]
            histograms = list(reference["features"])
            if len(histograms) != len(features):
                raise IntegrityError(f"{what}.reference.features: {len(histograms)} histograms for "
                                     f"{len(features)} features")
            counted = Counts(
                tuple(_counts(c, len(f.edges) + 1, f"{what}.reference.features[{i}]")
                      for i, (f, c) in enumerate(zip(features, histograms, strict=True))),
                _counts(reference["confidence"], len(confidence_edges) + 1, f"{what}.reference.confidence"),
                _counts(reference["classes"], classes, f"{what}.reference.classes"))
            raw_outputs = raw.get("outputs", {})
            if not isinstance(raw_outputs, Mapping):
                raise IntegrityError(f"{what}.outputs: is not an object")
            outputs = {str(sha): Outputs(
                _counts(o["confidence"], len(confidence_edges) + 1, f"{what}.outputs.{sha}.confidence"),
                _counts(o["classes"], classes, f"{what}.outputs.{sha}.classes")) for sha, o in raw_outputs.items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{what}: not a monitoring object ({exc})") from exc
        rows = raw.get("rows", counted.rows)
        sums = {f"features[{i}]": int(c.sum()) for i, c in enumerate(counted.features)}
        sums.update(confidence=int(counted.confidence.sum()), classes=int(counted.classes.sum()))
        for sha, output in outputs.items():  # every variant ran on the same data
            sums.update({f"outputs.{sha}.confidence": int(output.confidence.sum()),
                         f"outputs.{sha}.classes": int(output.classes.sum())})
        for name, total in sums.items():
            if total != rows:
                place = name if name.startswith("outputs.") else f"reference.{name}"
                raise IntegrityError(f"{what}.{place}: counts add up to {total}, not the reference's {rows} rows")
        return cls(features, confidence_edges, classes, counted, str(scores), outputs)


def build_reference(x: NDArray[np.floating], scores: NDArray[np.floating], *, bins: int = DEFAULT_BINS,
                    variants: Mapping[str, NDArray[np.floating]] | None = None) -> Monitoring:
    """Bins from the quantiles of the reference inputs `x` and the base model's `scores`, and their counts in
    them; `variants` (variant_sha256 -> that variant's scores on the same `x`) get their output counts in the
    same bins, read as the base's scores are (`scores_kind` of the base's)."""
    if len(x) == 0 or len(x) != len(scores):
        raise ValueError(f"need as many score rows as inputs (>= 1), got {len(x)} inputs, {len(scores)} scores")
    matrix = extract(x)
    names = feature_names(tuple(np.shape(x)[1:]))
    kind = scores_kind(scores)
    confidence, _ = confidence_and_class(scores, kind=kind)
    classes = int(np.asarray(scores).reshape(len(scores), -1).shape[1])
    edges = Monitoring(tuple(Feature(name, quantile_edges(matrix[:, i], bins)) for i, name in enumerate(names)),
                       quantile_edges(confidence, bins), classes,
                       Counts((), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)), kind)
    outputs = {}
    for sha, variant_scores in (variants or {}).items():
        if len(variant_scores) != len(x):
            raise ValueError(f"variant {sha[:12]}: {len(variant_scores)} score rows for {len(x)} inputs")
        outputs[sha] = edges.count_outputs(variant_scores)
    return Monitoring(edges.features, edges.confidence_edges, classes, edges.count(x, scores), kind, outputs)


def _edges(raw: Any, what: str) -> tuple[float, ...]:
    edges = tuple(float(e) for e in raw)
    if not all(np.isfinite(edges)) or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise IntegrityError(f"{what}: edges must be finite and strictly ascending")
    return edges


def _counts(raw: Any, bins: int, what: str) -> NDArray[np.int64]:
    if not isinstance(raw, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in raw) \
            or len(raw) != bins:
        raise IntegrityError(f"{what}: must be {bins} integer counts >= 0, got {str(raw)[:200]}")
    return np.asarray(raw, dtype=np.int64)
