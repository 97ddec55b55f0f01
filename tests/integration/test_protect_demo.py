"""`tinymlops demo --scenario protect` on the embedded stack, small: two licensees' fleets on their own watermarked
menus, a disguised leak named, an extraction attack flagged beside normal applications that are not.

Robust on any machine: the watermark's chance-match bound does not depend on timing, and the extraction test
is the detector's on fixed seeds (benchmarks/prada.py: every Jacobian-augmentation run flagged by 60 queries,
no normal client of 1,000 shuffled images flagged, lowest W 0.80 against the 0.75 threshold).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.quiet import Quiet
from tinymlops.stack.demo import DemoOptions
from tinymlops.stack.protect import LICENSEES, UNLISTED, run_protect

pytestmark = pytest.mark.integration


def test_a_leak_is_named_and_an_extraction_flagged(tmp_path: Path, prometheus_bin: str) -> None:
    pytest.importorskip("torch")
    report = run_protect(DemoOptions(root=tmp_path, devices=6, scenario="protect", timeout_s=300.0), Quiet())
    protection = report["protection"]

    menus = {m["licensee"]: m for m in protection["licensee_menus"]}
    assert set(menus) == set(LICENSEES)
    assert len({m["menu_sha256"] for m in menus.values()}) == len(LICENSEES)  # differently watermarked menus
    for licensee, menu in menus.items():
        assert menu["plan_folder"].endswith(f"/licensees/{licensee}/")
        assert menu["converged"] == menu["devices"] > 0
    assert protection["refused_fleet"]["reason"] == "UnknownLicensee"
    assert f"spec.licensee: '{UNLISTED}'" in protection["refused_fleet"]["message"]

    leak = protection["leak"]
    assert leak["attribution"]["licensee"] == leak["licensee"] == LICENSEES[0] and leak["named_correctly"]
    assert leak["attribution"]["chance_match_probability"] <= 1e-6
    assert leak["control"]["named"] is None
    # The same thief cannot take the other licensee's copy instead, to frame that licensee: no grant for it.
    other = leak["other_licensee"]
    assert other["licensee"] == LICENSEES[1] and other["device"] == leak["device"]
    assert other["folder"].endswith(f"/licensees/{LICENSEES[1]}/") and other["blob_fetched"] and other["encrypted"]
    assert not other["grant_for_device"] and not other["opened"]
    assert "no data key is wrapped for this device" in other["refused"]

    extraction = protection["extraction"]
    attacker = extraction["attacker"]
    assert attacker["flagged"] and attacker["queries_to_flag"] <= 100
    assert sorted(attacker["output_after_alarm"])[-2:] == [0.0, 1.0]  # labels only, once flagged (top1)
    assert extraction["false_alarms"] == 0
    assert all(c["queries"] > 0 and not c["flagged"] for c in extraction["normal_clients"])
    assert sum(extraction["fleet_metric"].values()) >= 1
