"""`tinymlops demo --scenario hybrid`, small: slow devices with the pre/post modules choose local, split or
cascade as the simulated link changes, fall back to local when it is gone, and the report says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.quiet import Quiet
from tinymlops.stack.demo import DemoOptions, run_demo
from tinymlops.stack.hybrid import DEVICES, INFERENCES_PER_STEP
from tinymlops.stack.hybridtrace import TRACE

pytestmark = pytest.mark.integration
pytest.importorskip("wasmtime", reason="wasmtime is not installed (pip install 'tinymlops[wasm]')")


def test_devices_follow_the_link_and_fall_back_when_it_is_gone(tmp_path: Path, prometheus_bin: str) -> None:
    report = run_demo(DemoOptions(root=tmp_path, devices=3, scenario="hybrid", timeout_s=240.0, encrypt=False),
                      Quiet())
    hybrid = report["hybrid"]
    assert hybrid["inferences"] == len(TRACE) * len(DEVICES) * INFERENCES_PER_STEP
    devices = hybrid["devices"]
    assert all(d["pre_post_modules"] and d["errors"] == 0 for d in devices.values())
    by_link: dict[str, dict[str, int]] = {}
    for point in hybrid["timeline"]:
        for mode, n in point["modes"].items():
            by_link.setdefault(point["link"], {}).setdefault(mode, 0)
            by_link[point["link"]][mode] += n
    assert not {"split", "cascade-cloud"} & set(by_link["offline"])  # nothing leaves a device without a link
    assert "split" not in by_link["edge"] or by_link["edge"]["split"] <= by_link["edge"].get("local", 0) // 4
    assert by_link["lan"].get("split", 0) > 0 and by_link["lan"].get("cascade-cloud", 0) + by_link["lan"].get(
        "cascade-local", 0) > 0
    for name, device in devices.items():
        if device["policy"] == "split":
            assert not any(m.startswith("cascade") for m in device["modes"]), name  # no cloud variant, no consent
            # 20 s offline, a probe every 10 s: one fails, then local until the retry (a cascade device tries only
            # when it is unsure of an answer, which may not happen while it is offline)
            assert device["fallbacks"] >= 1 and device["probes"] >= 1, name
    assert hybrid["bytes_sent"] > 0 and 0 < hybrid["cascade_share"] <= 1
    for name, reasons in hybrid["reasons"].items():  # each change of mode, with why
        if devices[name]["policy"] == "split":
            assert any(": split@" in r for r in reasons) and any(": local: " in r for r in reasons), reasons
