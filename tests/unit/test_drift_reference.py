"""Reference histograms: features, quantile bins and counts (tinymlops/drift/features.py, reference.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinymlops.drift.features import IMAGE_FEATURES, extract, feature_names
from tinymlops.drift.reference import (
    LOGITS,
    PROBABILITIES,
    PROBABILITY_ATOL,
    Monitoring,
    build_reference,
    confidence_and_class,
    counts,
    quantile_edges,
    scores_kind,
)
from tinymlops.errors import IntegrityError


def digits_like(n: int, seed: int = 0) -> np.ndarray:
    """8x8 'images' as flat 64-vectors in [0, 1], with a blank border like the digits."""
    x = np.zeros((n, 8, 8), dtype=np.float32)
    x[:, 1:7, 2:6] = np.random.default_rng(seed).integers(0, 17, (n, 6, 4)) / 16
    return x.reshape(n, 64)


def test_small_inputs_get_one_feature_per_value_and_images_get_summaries() -> None:
    assert feature_names((3,)) == ("x[0]", "x[1]", "x[2]")
    assert feature_names((64,)) == IMAGE_FEATURES
    assert feature_names((1, 8, 8)) == IMAGE_FEATURES
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    assert extract(x).tolist() == [[1.0, 2.0, 3.0]]


def test_image_summaries_are_what_their_names_say() -> None:
    image = np.zeros((8, 8))
    image[:4, :4] = 1.0  # top-left quadrant lit
    features = dict(zip(IMAGE_FEATURES, extract(image.reshape(1, 64))[0], strict=True))
    assert features["brightness"] == pytest.approx(0.25)
    assert features["contrast"] == pytest.approx(np.std(image))
    assert [features[f"region[{i}]"] for i in range(4)] == pytest.approx([1.0, 0.0, 0.0, 0.0])
    # 4 horizontal and 4 vertical neighbour pairs cross the quadrant's edges, of 2 * 8 * 7 pairs
    assert features["edges"] == pytest.approx(8 / 112)
    # The same image as (channels, rows, columns) gives the same features.
    assert extract(image.reshape(1, 1, 8, 8)) == pytest.approx(extract(image.reshape(1, 64)))


def test_edges_are_deterministic_quantiles_and_deduplicated() -> None:
    values = np.random.default_rng(1).normal(size=1000)
    assert quantile_edges(values) == quantile_edges(values.copy())
    assert len(quantile_edges(values)) == 9
    assert quantile_edges(np.full(50, 0.0)) == (0.0,)  # a constant still separates "as before" from "above"
    assert quantile_edges(np.array([0.0] * 80 + [1.0] * 20)) == (0.0, 1.0)


def test_bins_are_right_closed_and_catch_everything() -> None:
    edges = (0.0, 1.0)
    assert counts(edges, np.array([-5.0, 0.0, 0.5, 1.0, 1.5, 99.0])).tolist() == [2, 2, 2]


def test_confidence_uses_probabilities_as_they_are_and_softmaxes_logits() -> None:
    probabilities = np.array([[0.1, 0.7, 0.2]])
    confidence, predicted = confidence_and_class(probabilities, kind=PROBABILITIES)
    assert confidence.tolist() == pytest.approx([0.7]) and predicted.tolist() == [1]
    logits = np.array([[0.0, np.log(3.0)]])  # softmax: 1/4, 3/4
    confidence, predicted = confidence_and_class(logits, kind=LOGITS)
    assert confidence.tolist() == pytest.approx([0.75]) and predicted.tolist() == [1]


def test_what_the_scores_are_is_decided_once_from_the_base_not_per_row() -> None:
    base = np.random.default_rng(5).dirichlet(np.ones(10), 200).astype(np.float32)
    assert scores_kind(base) == PROBABILITIES
    assert scores_kind(np.random.default_rng(6).normal(size=(200, 10))) == LOGITS
    # A uint8-quantized variant's probabilities: multiples of 1/256 whose rows sum to 1 only within ~1/100.
    quantized = np.floor(base * 256) / 256
    assert np.abs(quantized.sum(axis=1) - 1).max() > PROBABILITY_ATOL  # a per-row test would call them logits
    confidence, _ = confidence_and_class(quantized, kind=scores_kind(base))
    assert confidence.tolist() == pytest.approx(quantized.max(axis=1).tolist())


def test_each_variant_gets_its_own_output_counts_in_the_base_bins() -> None:
    x = digits_like(400, seed=7)
    base = np.random.default_rng(8).dirichlet(np.ones(10) * 0.3, 400).astype(np.float32)
    quantized = np.floor(base * 256) / 256
    monitoring = build_reference(x, base, variants={"f" * 64: base, "8" * 64: quantized})
    assert monitoring.scores == PROBABILITIES
    assert monitoring.outputs["f" * 64].confidence.tolist() == monitoring.reference.confidence.tolist()
    own = monitoring.outputs["8" * 64]
    assert int(own.confidence.sum()) == int(own.classes.sum()) == 400
    assert own.confidence.tolist() == monitoring.count_outputs(quantized).confidence.tolist()
    wire = json.loads(json.dumps(monitoring.to_json()))
    assert wire["scores"] == PROBABILITIES and set(wire["outputs"]) == {"f" * 64, "8" * 64}
    assert Monitoring.from_json(wire).to_json() == monitoring.to_json()
    wire["outputs"]["8" * 64]["classes"][0] += 1
    with pytest.raises(IntegrityError, match="monitoring.outputs.8+.classes: counts add up to 401"):
        Monitoring.from_json(wire)


def test_reference_counts_every_row_once_per_histogram_and_round_trips() -> None:
    x = digits_like(500)
    scores = np.random.default_rng(2).dirichlet(np.ones(10), 500).astype(np.float32)
    monitoring = build_reference(x, scores)
    assert monitoring.rows == 500
    for histogram in (*monitoring.reference.features, monitoring.reference.confidence):
        assert int(histogram.sum()) == 500
    wire = json.loads(json.dumps(monitoring.to_json()))
    assert Monitoring.from_json(wire).to_json() == monitoring.to_json()
    assert [f["name"] for f in wire["features"]] == list(IMAGE_FEATURES)


def test_device_counts_add_up_to_the_reference_exactly() -> None:
    """Counting the data in pieces (as windows do) gives the factory's counts: PSI over them is exact."""
    x = digits_like(300, seed=3)
    scores = np.random.default_rng(4).normal(size=(300, 10)).astype(np.float32)
    monitoring = build_reference(x, scores)
    pieces = [monitoring.count(x[i:i + 1], scores[i:i + 1]) for i in range(300)]
    total = pieces[0]
    for piece in pieces[1:]:
        total = total + piece
    assert total.to_json() == monitoring.reference.to_json()


def test_a_monitoring_object_whose_counts_do_not_fit_its_bins_is_named() -> None:
    monitoring = build_reference(digits_like(50), np.eye(10)[np.arange(50) % 10])
    wire = monitoring.to_json()
    wire["reference"]["features"][2] = wire["reference"]["features"][2][:-1]
    with pytest.raises(IntegrityError, match=r"monitoring.reference.features\[2\]"):
        Monitoring.from_json(wire)
    wire = monitoring.to_json()
    wire["features"][0]["edges"] = [1.0, 0.5]
    with pytest.raises(IntegrityError, match=r"features\[0\].edges: .*ascending"):
        Monitoring.from_json(wire)
