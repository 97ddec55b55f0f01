"""On-device personalisation, the pure core: the fit, the decision, the policy, the data checks."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from tinymlops.errors import InvalidDataError, NoLastLayerError, SpecError
from tinymlops.personalise import Head, PersonalisationPolicy, check_data, check_reproduces, personalise
from tinymlops.personalise.head import accuracy, fit, split

CLASSES, FEATURES = 4, 8


def blobs(n: int, seed: int) -> tuple[NDArray[np.float32], NDArray[np.int64], Head]:
    """Features in well-separated Gaussian clusters, their classes, and a base head that knows the clusters
    (each class's weights are its cluster centre, the bias -|centre|^2/2: the nearest-centre rule)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(CLASSES, FEATURES))
    labels = rng.integers(0, CLASSES, size=n)
    features = (centres[labels] + rng.normal(0, 1, size=(n, FEATURES))).astype(np.float32)
    base = Head(centres.T.astype(np.float32), (-0.5 * (centres**2).sum(1)).astype(np.float32), softmax=True)
    return features, labels, base


def test_a_device_whose_labels_are_permuted_gains_what_the_base_knew() -> None:
    features, labels, base = blobs(400, seed=1)
    base_scores = base.scores(features)
    knows = accuracy(base_scores, labels)  # what the base gets right on the device's true classes
    permutation = np.roll(np.arange(CLASSES), 1)  # a derangement: the device names every class differently
    local = permutation[labels]
    outcome = personalise(features, base_scores, local, base, PersonalisationPolicy(l2=0.001))
    # The base can only be right where it is wrong on the true classes; a head with permuted columns is as
    # right as the base was, so the fit gets close to that.
    assert outcome.base_accuracy <= 1 - knows + 0.05
    assert outcome.personal_accuracy >= knows - 0.1
    assert outcome.used and "local validation accuracy" in outcome.reason
    assert outcome.train_samples + outcome.validation_samples == len(local)


def test_a_device_that_sees_a_subset_of_classes_improves() -> None:
    features, labels, base = blobs(400, seed=2)
    # The device's sensor folds classes 2 and 3 into 0: the base's 2s and 3s are wrong there.
    local = np.where(labels >= 2, 0, labels)
    base_scores = base.scores(features)
    folded = float(np.mean(labels >= 2))
    outcome = personalise(features, base_scores, local, base, PersonalisationPolicy(l2=0.001))
    assert outcome.used and outcome.improvement >= folded / 2


def test_when_the_base_is_already_right_the_head_is_not_used() -> None:
    features, _, base = blobs(400, seed=3)
    base_scores = base.scores(features)
    own = np.argmax(base_scores, 1).astype(np.int64)  # labels the base gets all right: nothing to gain
    outcome = personalise(features, base_scores, own, base, PersonalisationPolicy())
    assert outcome.base_accuracy == 1.0 and not outcome.used
    assert outcome.reason.startswith("not used") and "base keeps serving" in outcome.reason


def test_the_required_improvement_is_respected() -> None:
    features, labels, base = blobs(400, seed=4)
    local = np.roll(np.arange(CLASSES), 1)[labels]
    outcome = personalise(features, base.scores(features), local, base, PersonalisationPolicy(min_improvement=1.0))
    assert not outcome.used and outcome.improvement > 0.5  # it helps a lot, but not by the 100 points asked


def test_a_strong_pull_keeps_the_base_layer() -> None:
    features, labels, base = blobs(200, seed=5)
    local = np.roll(np.arange(CLASSES), 1)[labels]
    kept = fit(features, local, base, l2=1e6, steps=50)
    assert np.allclose(kept.weight, base.weight, atol=1e-3) and np.allclose(kept.bias, base.bias, atol=1e-3)


def test_the_split_is_seeded_and_covers_every_sample_once() -> None:
    train, held = split(100, 0.25, seed=0)
    again = split(100, 0.25, seed=0)
    assert np.array_equal(train, again[0]) and len(held) == 25
    assert sorted([*train, *held]) == list(range(100))


def test_too_few_samples_are_refused_with_the_policy_key() -> None:
    features, labels, base = blobs(10, seed=6)
    with pytest.raises(InvalidDataError, match="minSamples"):
        personalise(features, base.scores(features), labels, base, PersonalisationPolicy())


def test_a_layer_that_does_not_give_the_base_classes_is_refused() -> None:
    features, labels, base = blobs(100, seed=7)
    check_reproduces(base, features, base.scores(features))
    wrong = Head(base.weight[:, ::-1].copy(), base.bias[::-1].copy(), True)
    with pytest.raises(NoLastLayerError, match="gives the model's class on only"):
        check_reproduces(wrong, features, base.scores(features))


@pytest.mark.parametrize(("x", "y", "message"), [
    (np.zeros((5, 64), np.float32), None, "has no array `y`"),
    (np.zeros((5, 63), np.float32), np.zeros(5, np.int64), r"shape \(5, 63\); the model takes \[batch, 64\]"),
    (np.zeros((5, 64), np.float64), np.zeros(5, np.int64), "x is float64"),
    (np.zeros((5, 64), np.float32), np.zeros(4, np.int64), "5 samples in x but 4 labels"),
    (np.zeros((5, 64), np.float32), np.array([0, 1, 10, 2, -1]), r"y\[2\] = 10 is not a class .*0\.\.9.*2 label"),
    (np.zeros((5, 64), np.float32), np.zeros(5, np.float32), "not one integer label per sample"),
])
def test_bad_data_is_named(x: NDArray[np.float32], y: NDArray[np.int64] | None, message: str) -> None:
    with pytest.raises(InvalidDataError, match=message):
        check_data(x, y, ["N", 64], 10, source="mine.npz")


def test_the_policy_reads_the_plan_and_names_bad_fields() -> None:
    policy = PersonalisationPolicy.from_policy({"personalisation": {"enabled": True, "minImprovement": 0.05,
                                                                    "future": 1}, "objective": "latency"})
    assert policy.enabled is True and policy.min_improvement == 0.05
    assert PersonalisationPolicy.from_policy({}).enabled is None
    assert PersonalisationPolicy.from_policy({"personalisation": policy.to_plan()}) == policy
    for section, field in [({"enabled": "yes"}, "enabled"), ({"minImprovement": 2}, "minImprovement"),
                           ({"validationFraction": 1}, "validationFraction"), ({"minSamples": 2.5}, "minSamples"),
                           ({"l2": -1}, "l2"), ({"steps": 0}, "steps")]:
        with pytest.raises(SpecError, match=rf"policy\.personalisation\.{field}:"):
            PersonalisationPolicy.from_policy({"personalisation": section})
    with pytest.raises(SpecError, match=r"policy\.personalisation: "):
        PersonalisationPolicy.from_policy({"personalisation": True})


def test_quantized_near_ties_in_the_base_output_count_as_agreement_within_the_tolerance() -> None:
    head = Head(np.eye(2, dtype=np.float32), np.zeros(2, np.float32), softmax=False)  # scores = features
    features = np.tile(np.array([[0.49, 0.51]], np.float32), (50, 1))  # the float layer: class 1, narrowly
    quantized = np.tile(np.array([[0.50, 0.48]], np.float32), (50, 1))  # an int8 output rounded the other way
    with pytest.raises(NoLastLayerError, match="on only 0.0%"):
        check_reproduces(head, features, quantized)
    check_reproduces(head, features, quantized, atol=0.02)  # within the variant's health-check tolerance
