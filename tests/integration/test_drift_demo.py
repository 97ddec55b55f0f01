"""`tinymlops demo --scenario drift` on the embedded stack, small: one shifted class is named, the control is not.

Robust on any machine: the shift (every pixel 0.15 brighter) moves the brightness feature's PSI to
several tenths within a window or two, far beyond what ε = 1 noise on thousands of rows can hide, and
the control serves the very samples the reference was built from, which the no-drift simulation
(drawing the live side independently of the reference) treats conservatively: at the 1 % false
discovery rate a control feature would need a p-value below 0.001 that its null gives it about never.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.quiet import Quiet
from tinymlops.stack.demo import DemoOptions, run_demo
from tinymlops.stack.drift import SHIFTED_CLASS

pytestmark = pytest.mark.integration


def test_a_shifted_class_is_named_in_drifted_and_the_control_raises_nothing(
        tmp_path: Path, prometheus_bin: str) -> None:
    report = run_demo(DemoOptions(root=tmp_path, devices=40, scenario="drift", shift="brighter",
                                  timeout_s=240.0), Quiet())
    drift = report["drift"]
    control = drift["control"]
    assert not control["raised"] and control["condition"]["status"] == "False", control["condition"]
    assert {entry["verdict"] for entry in control["by_class"].values()} == {"no drift"}

    assert drift["condition"]["status"] == "True", drift["condition"]
    assert drift["named_classes"] == [SHIFTED_CLASS]
    shifted = drift["by_class"][SHIFTED_CLASS]
    assert shifted["verdict"] == "drift" and shifted["shifted"]
    assert "brightness" in [f["feature"] for f in shifted["top"]]
    assert shifted["windows_to_detection"] is not None and shifted["windows_to_detection"] > 0
    assert SHIFTED_CLASS in drift["condition"]["message"]
    others = {cls: entry["verdict"] for cls, entry in drift["by_class"].items() if cls != SHIFTED_CLASS}
    assert set(others.values()) == {"no drift"}, others
    assert all(entry["bytes_per_report"] for entry in drift["by_class"].values())
