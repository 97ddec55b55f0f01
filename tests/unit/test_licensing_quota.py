"""Refusals a licence gives (pure), judged by the latest time seen; and the usage statement's rows."""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.licensing import chain
from tinymlops.licensing.checkpoint import seal
from tinymlops.licensing.quota import clock_set_back, effective_now, refusal
from tinymlops.licensing.reconcile import reconcile
from tinymlops.licensing.statement import DeviceUsage, statement
from tinymlops.licensing.token import new_license

T0 = 1_800_000_000.0
KEY = Ed25519PrivateKey.generate()
LICENSE = new_license(licensee="acme", device=KEY.public_key(), models=["ab" * 32], quota=10_000, not_before=T0,
                      expires=T0 + 86400, issued_at=T0)


def test_refusals_name_quota_validity_and_what_is_left() -> None:
    assert refusal(LICENSE, 9_999, 1, T0 + 1) is None
    assert refusal(LICENSE, 10_000, 1, T0 + 1) == ("quota exhausted: 10,000 of 10,000 inferences used; reconnect to "
                                                   "refill")
    assert "2 of 10,000 left" in str(refusal(LICENSE, 9_998, 5, T0 + 1))
    assert "expired at" in str(refusal(LICENSE, 0, 1, T0 + 86400))
    assert "not valid before" in str(refusal(LICENSE, 0, 1, T0 - 1))


def test_a_clock_set_back_neither_stretches_a_licence_nor_passes_unnoticed() -> None:
    latest = T0 + 90_000  # the device saw this time, then its clock was set back a day
    now = latest - 86_400
    assert refusal(LICENSE, 0, 1, effective_now(now, latest)) is not None  # still expired
    assert clock_set_back(now, latest) == 86_400 and clock_set_back(latest - 10, latest) == 0.0


def test_the_statement_counts_per_licensee_and_period_with_refills_and_anomalies() -> None:
    token = LICENSE.token_id_bytes
    cps, head, start = [], chain.GENESIS, 0
    for when in (T0, T0 + 40 * 86400):  # two months
        receipts = os.urandom(32 * 5)
        new = chain.fold(head, start + 1, receipts, token)
        cps.append(seal(KEY, token_id=token, start=start, end=start + 5, sealed_at=int(when), prev_head=head,
                        head=new, root=chain.interval_root(start + 1, receipts)))
        head, start = new, start + 5
    refill = new_license(licensee="acme", device=KEY.public_key(), models=["ab" * 32], quota=10, not_before=T0,
                         expires=T0 + 86400 * 60, epoch=2, issued_at=T0 + 40 * 86400)
    result = reconcile([cps[0], cps[1], cps[1]], KEY.public_key())
    rows = statement([DeviceUsage("dev", [LICENSE, refill], result)], "month")
    assert [(r.licensee, r.period, r.inferences, r.refills, r.anomalies) for r in rows] == [
        ("acme", "2027-01", 5, 0, {}), ("acme", "2027-02", 5, 1, {"replayed-checkpoint": 1})]
