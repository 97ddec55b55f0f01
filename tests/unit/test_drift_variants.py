"""Per-variant output references: a fleet's outputs are compared with the outputs of the variants that counted
them (drift/reference.py `outputs`, drift/merge.py's mixture), so a quantized fleet is not drift, and a variant
that behaves differently from its own reference on the same inputs is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.unit import drift_samples as samples
from tinymlops.drift.merge import UNKNOWN_VARIANT, Baseline, Merged, check
from tinymlops.drift.reference import Monitoring, variant_sha256
from tinymlops.errors import DriftRefusedError
from tinymlops.layout import model_prefix
from tinymlops.model.digits import DigitsArtifacts
from tinymlops.runners import Runner
from tinymlops.store import DirectoryStore
from tinymlops.variants import build_variants

INT8 = "8" * 64
WINDOW = 500


def with_int8_outputs(seed: int = 0) -> tuple[dict[str, Any], np.ndarray]:
    """samples.monitoring, and an int8 variant whose confidences sit one bin lower than the base's."""
    monitoring, edges = samples.monitoring(seed)
    base = monitoring["reference"]["confidence"]
    lower = [base[0] + base[1], *base[2:], 0]  # every confidence moved down a bin
    monitoring["outputs"] = {INT8: {"confidence": lower, "classes": monitoring["reference"]["classes"]}}
    return monitoring, edges


def int8_window(rng: np.random.Generator, edges: np.ndarray, monitoring: dict[str, Any], *, window: int,
                variant: str = INT8) -> dict[str, Any]:
    """A window of an int8 device on reference-like inputs: confidences drawn from int8's own reference."""
    payload = samples.drift_payload(rng, edges, rows=WINDOW, window=window, variant_sha256=variant)
    own = np.asarray(monitoring["outputs"][INT8]["confidence"], dtype=np.float64)
    payload["confidence"] = rng.multinomial(WINDOW, own / own.sum()).tolist()
    return payload


def baseline_of(monitoring: dict[str, Any]) -> Baseline:
    return Baseline.from_monitoring(monitoring, menu_sha256=samples.MENU_SHA, variants=[samples.VARIANT_SHA, INT8])


def test_the_output_reference_is_the_mixture_of_the_variants_that_counted() -> None:
    monitoring, _ = with_int8_outputs()
    baseline = baseline_of(monitoring)
    base = np.asarray(monitoring["reference"]["confidence"], dtype=np.float64)
    int8 = np.asarray(monitoring["outputs"][INT8]["confidence"], dtype=np.float64)
    mixed = baseline.reference_for({samples.VARIANT_SHA: 3000, INT8: 1000})
    # samples.VARIANT_SHA has no output reference of its own: the base's stands in for it.
    assert mixed[-2] == pytest.approx(0.75 * base + 0.25 * int8)
    assert mixed[-2].sum() == pytest.approx(monitoring["rows"])  # the reference's rows, as the null model needs
    assert [m.tolist() for m in mixed[:-2]] == [b.tolist() for b in baseline.counts[:-2]]  # inputs: unchanged
    assert baseline.reference_for({INT8: 10})[-2].tolist() == int8.tolist()
    assert [m.tolist() for m in baseline.reference_for({})] == [b.tolist() for b in baseline.counts]


def test_merged_windows_keep_each_variants_rows() -> None:
    monitoring, edges = with_int8_outputs()
    baseline, rng = baseline_of(monitoring), np.random.default_rng(1)
    one, other = Merged(baseline), Merged(baseline)
    one.add(check(int8_window(rng, edges, monitoring, window=0), baseline, revision=1))
    other.add(check(samples.drift_payload(rng, edges, rows=WINDOW, window=1), baseline, revision=1))
    one.add_merged(other)
    assert one.variant_rows == {INT8: WINDOW, samples.VARIANT_SHA: WINDOW}


@pytest.mark.parametrize("epsilon", [None, 1.0])
def test_an_int8_fleet_without_shift_is_not_drift_against_its_own_outputs(epsilon: float | None) -> None:
    monitoring, edges = with_int8_outputs(2)
    rng = np.random.default_rng(3)
    payloads = [int8_window(rng, edges, monitoring, window=w) for w in range(20)]
    if epsilon is not None:  # noised as a device does, over int8's confidences
        payloads = [noised(rng, p, epsilon) for p in payloads]
    own, base_only = Merged(baseline_of(monitoring)), Merged(baseline_of({**monitoring, "outputs": {}}))
    for payload in payloads:
        own.add(check(payload, own.baseline, revision=1))
        base_only.add(check(payload, base_only.baseline, revision=1))
    assert not own.score().drifted
    assert [f.name for f in base_only.score().top()] == ["@confidence"]  # what the base's reference alone says


def noised(rng: np.random.Generator, payload: dict[str, Any], epsilon: float) -> dict[str, Any]:
    from tinymlops.drift import privacy

    scale = privacy.scale_for(samples.FEATURES + 2, epsilon)

    def noisy(counts: list[int]) -> list[int]:
        return [int(c) for c in privacy.release(rng, counts, scale)]

    return {**payload, "mode": "histograms+dp", "epsilon": epsilon,
            "features": [noisy(c) for c in payload["features"]], "confidence": noisy(payload["confidence"]),
            "classes": noisy(payload["classes"])}


def test_a_variant_that_behaves_differently_from_its_own_reference_is_drift() -> None:
    """Same inputs (the features do not move), but the int8 devices' confidences are the base's, not int8's."""
    monitoring, edges = with_int8_outputs(4)
    baseline, rng = baseline_of(monitoring), np.random.default_rng(5)
    merged = Merged(baseline)
    for w in range(20):
        merged.add(check(samples.drift_payload(rng, edges, rows=WINDOW, window=w, variant_sha256=INT8), baseline,
                         revision=1))
    verdict = merged.score()
    assert [f.name for f in verdict.top()] == ["@confidence"]
    assert not any(f.drifted for f in verdict.features if f.name.startswith("x["))


def test_a_window_naming_a_variant_the_menu_does_not_list_is_refused() -> None:
    monitoring, edges = with_int8_outputs()
    payload = samples.drift_payload(np.random.default_rng(6), edges, variant_sha256="0" * 64)
    with pytest.raises(DriftRefusedError, match=r"drift\.variant_sha256: '0+' is not a variant") as refused:
        check(payload, baseline_of(monitoring), revision=1)
    assert refused.value.reason == UNKNOWN_VARIANT
    del payload["variant_sha256"]
    with pytest.raises(DriftRefusedError, match=r"drift\.variant_sha256: 'None'"):
        check(payload, baseline_of(monitoring), revision=1)


def test_a_real_int8_menu_is_judged_against_int8s_outputs(tmp_path: Path, digits: DigitsArtifacts) -> None:
    """The digits model built fp32 + int8-static: each runnable variant has its own output reference in the
    base's bins, int8 windows on the reference inputs are not drift against it, and (the bug this fixes) the
    base's reference alone would call them drift."""
    signing_key = Ed25519PrivateKey.generate()
    root = tmp_path / "store"
    menu = build_variants(digits.model_path, digits.data_path, DirectoryStore(root), model_prefix("ns", "digits"),
                          signing_key=signing_key, model_ref=("ns", "digits"), precisions=("fp32", "int8"))
    entries = {v["id"]: v for v in menu["variants"]}
    assert set(entries) >= {"fp32", "int8-static"}
    monitoring = Monitoring.from_json(menu["monitoring"])
    assert monitoring.scores == "probabilities"
    assert set(monitoring.outputs) == {variant_sha256(v) for v in menu["variants"]}  # all ONNX: all runnable
    int8 = entries["int8-static"]
    with np.load(digits.data_path) as npz:
        x = npz["x"].astype(np.float32)
    assert len(x) == monitoring.rows  # the reference counted the build data once
    int8_scores = Runner.load((root / "models/ns/digits/blobs" / int8["sha256"]).read_bytes()).many(x)
    assert monitoring.count_outputs(int8_scores).confidence.tolist() == \
        monitoring.outputs[variant_sha256(int8)].confidence.tolist()

    def windows(baseline: Baseline, seed: int) -> Merged:
        """Devices on int8 serving resamples of the reference inputs (no shift at all)."""
        rng, merged = np.random.default_rng(seed), Merged(baseline)
        for w in range(12):
            rows = rng.integers(0, len(x), WINDOW)
            counted = monitoring.count(x[rows], int8_scores[rows])
            payload = {"menu_sha256": baseline.menu_sha256, "revision": 1, "variant_sha256": variant_sha256(int8),
                       "window": w, "rows": WINDOW, "mode": "histograms", "epsilon": None, **counted.to_json()}
            merged.add(check(payload, baseline, revision=1))
        return merged

    own = Baseline.from_menu(menu, menu_sha256=samples.MENU_SHA)
    base_only = Baseline.from_menu({**menu, "monitoring": {**menu["monitoring"], "outputs": {}}},
                                   menu_sha256=samples.MENU_SHA)
    assert not windows(own, 7).score().drifted
    assert "@confidence" in [f.name for f in windows(base_only, 7).score().top()]


def test_an_encrypted_menu_names_output_references_by_the_plaintext(tmp_path: Path, digits: DigitsArtifacts) -> None:
    """Devices name their variant by the model's own digest, whether or not the menu is encrypted."""
    menu = build_variants(digits.model_path, digits.data_path, DirectoryStore(tmp_path), model_prefix("ns", "d"),
                          signing_key=Ed25519PrivateKey.generate(), model_ref=("ns", "d"), precisions=("fp32",),
                          data_key=bytes(range(32)))
    (entry,) = menu["variants"]
    assert entry["encryption"]["plaintext_sha256"] != entry["sha256"]
    assert set(menu["monitoring"]["outputs"]) == {entry["encryption"]["plaintext_sha256"]} == {variant_sha256(entry)}
    assert Baseline.from_menu(menu, menu_sha256=samples.MENU_SHA).variants == {variant_sha256(entry)}
