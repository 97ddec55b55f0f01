"""Audits: sample sizes, sampled receipts with pymerkle inclusion proofs, canary comparison."""

from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.licensing import chain
from tinymlops.licensing.audit import (
    answer,
    choose,
    compare_canaries,
    detection_probability,
    samples_for,
    verify_answers,
)
from tinymlops.licensing.checkpoint import Checkpoint, seal


def test_sample_size_for_one_percent_at_95_percent() -> None:
    k = samples_for(0.01, 0.95)
    assert k == 299
    assert detection_probability(0.01, k) >= 0.95 > detection_probability(0.01, k - 1)
    with pytest.raises(ValueError):
        samples_for(0.0, 0.95)


def _interval(n: int) -> tuple[Checkpoint, bytes]:
    receipts = b"".join(chain.receipt(os.urandom(12), os.urandom(4)) for _ in range(n))
    token = os.urandom(16)
    start = 500
    cp = seal(Ed25519PrivateKey.generate(), token_id=token, start=start, end=start + n, sealed_at=1,
              prev_head=chain.GENESIS, head=chain.fold(chain.GENESIS, start + 1, receipts, token),
              root=chain.interval_root(start + 1, receipts))
    return cp, receipts


def test_an_honest_device_answers_every_sample() -> None:
    cp, receipts = _interval(300)
    asked = choose(cp, 40, b"server nonce")
    assert len(set(asked)) == 40 and all(cp.start < c <= cp.end for c in asked)
    assert choose(cp, 40, b"server nonce") == asked != choose(cp, 40, b"another nonce")
    verdict = verify_answers(cp, asked, answer(cp, receipts, asked))
    assert verdict.ok and verdict.passed == 40


def test_faked_receipts_fail_the_samples_that_hit_them() -> None:
    cp, receipts = _interval(200)
    bad = set(range(0, 200, 10))  # 10 % of the interval: receipts the device cannot back
    asked = choose(cp, samples_for(0.10, 0.99), b"n")
    answers = answer(cp, receipts, asked)
    for a in answers:
        if a["counter"] - cp.start - 1 in bad:
            a["receipt"] = os.urandom(32).hex()  # whatever the device makes up, the proof cannot hold
    verdict = verify_answers(cp, asked, answers)
    expected_bad = sum(1 for c in asked if c - cp.start - 1 in bad)
    assert expected_bad and len(verdict.failures) == expected_bad
    assert all("inclusion proof fails" in f for f in verdict.failures)
    forged_root = verify_answers(cp, asked, answer(cp, receipts[32:] + receipts[:32], asked))
    assert not forged_root.passed  # a tree over other receipts than the signed root's


def test_unanswered_void_and_malformed_samples_are_named() -> None:
    cp, receipts = _interval(8)
    voided = receipts[:32] + chain.VOID + receipts[64:]
    asked = [cp.start + 1, cp.start + 2, cp.start + 3]
    answers = answer(cp, voided, asked[:2]) + [{"counter": asked[2], "receipt": "zz", "proof": {}}]
    failures = verify_answers(cp, asked, answers).failures
    assert any("void" in f for f in failures) and any("malformed" in f for f in failures)
    assert "not answered" in verify_answers(cp, asked, []).failures[0]


def test_canaries_pass_the_same_model_and_catch_another() -> None:
    rng = np.random.default_rng(0)
    expected = rng.random((32, 10), dtype=np.float32)
    assert compare_canaries(expected, expected + np.float32(1e-5)).ok
    swapped = expected[:, ::-1].copy()
    verdict = compare_canaries(expected, swapped)
    assert not verdict.ok and verdict.agreeing < 32
    assert not compare_canaries(expected, expected[:, :5]).ok
