"""Output policies: shapes kept, and the top-1 class kept on every output, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from tinymlops.errors import SpecError
from tinymlops.protection.outputs import MODES, apply
from tinymlops.protection.policy import OutputPolicy


def outputs() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    many = [rng.dirichlet(np.full(10, a)).astype(np.float32) for a in (0.05, 0.3, 1.0, 5.0) for _ in range(2500)]
    ties = [np.array([0.5, 0.5, 0, 0], np.float32), np.full(10, 0.1, np.float32),
            np.array([0.333, 0.333, 0.334], np.float32),
            np.array([0.4449, 0.4451, 0.11], np.float32), np.array([1.0, 0.0], np.float32), np.zeros(3, np.float32)]
    logits = [rng.normal(0, 3, 10).astype(np.float32) for _ in range(500)]
    return many + ties + logits


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("decimals", [0, 1, 2])
def test_every_mode_keeps_the_top1_class_and_the_shape_on_every_output(mode: str, decimals: int) -> None:
    for out in outputs():
        shown = apply(mode, out, decimals=decimals)
        assert shown.shape == out.shape
        assert int(np.argmax(shown)) == int(np.argmax(out)), (mode, out, shown)


def test_top1_is_one_hot_and_rounded_rounds() -> None:
    out = np.array([0.1234, 0.8766], np.float32)
    assert apply("top1", out).tolist() == [0.0, 1.0]
    assert np.allclose(apply("rounded", out, decimals=2), [0.12, 0.88])
    assert apply("full", out) is out


def test_perturbed_changes_the_probabilities() -> None:
    out = np.array([0.7, 0.2, 0.1], np.float32)
    shown = apply("perturbed", out)
    assert not np.allclose(shown, out, atol=1e-3) and int(np.argmax(shown)) == 0


def test_the_policy_is_read_and_checked_in_one_place() -> None:
    assert OutputPolicy.from_policy({}) == OutputPolicy()
    policy = OutputPolicy.from_policy({"protection": {"outputPolicy": {"mode": "top1", "applyTo": "alarmed"}}})
    assert policy.mode_for(alarmed=False) == "full" and policy.mode_for(alarmed=True) == "top1"
    for bad, field in (({"mode": "noise"}, "mode"), ({"decimals": -1}, "decimals"), ({"applyTo": "some"}, "applyTo")):
        with pytest.raises(SpecError, match=f"outputPolicy.{field}"):
            OutputPolicy.from_policy({"protection": {"outputPolicy": bad}})
