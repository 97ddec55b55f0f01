"""`tinymlops demo --scenario pay-per-query` on the embedded stack, small: the operator issues tokens, a device
runs out offline and is refilled on reconnect, a restored state is caught at reconcile, a swapped model fails
the canary audit, and the License's status counts the usage and names the anomaly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.quiet import Quiet
from tinymlops.stack.demo import DemoOptions, run_demo

pytestmark = pytest.mark.integration


def test_offline_quota_refill_rollback_and_swap_are_all_seen(tmp_path: Path, prometheus_bin: str) -> None:
    report = run_demo(DemoOptions(root=tmp_path, devices=6, scenario="pay-per-query", timeout_s=240.0), Quiet())
    lic = report["licensing"]
    assert lic["refused"] == "quota exhausted: 10 of 10 inferences used; reconnect to refill"
    assert lic["refill"]["epoch"] == 2 and lic["refill"]["quota"] == 10
    assert lic["rolled_back"]["anomalies"] == ["rolled-back-counter"]
    assert all(not u["anomalies"] for u in lic["uploads"].values())  # honest uploads reconcile clean
    assert lic["audits"]["canary"]["honest"]["ok"] and not lic["audits"]["canary"]["swapper"]["ok"]
    assert lic["audits"]["receipts"]["ok"]
    usage = lic["license"]["status"]["usage"]
    assert usage["refills"] >= 1 and usage["anomalies"] == {"rolled-back-counter": 1}
    assert usage["devicesWithAnomalies"] == [lic["rolled_back"]["device"]]
    assert lic["gateway_usage"]["inferences"] >= 6 + 13 + 16 + 5  # every counter spent, the re-used ones too
