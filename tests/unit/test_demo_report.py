"""The demo's JSON report is a file, so snake_case: it reads the Kubernetes statuses (camelCase) through one
inverse, `snake_case`, and gives the menu's figures back as the operator published them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tests.unit.samples import MENU
from tinymlops.stack import demo
from tinymlops_operator.logic import edgemodel


def report(fleet_status: dict[str, Any]) -> dict[str, Any]:
    model = {"status": edgemodel.ready_status({}, MENU, "c" * 64, 2)}
    simulator: Any = SimpleNamespace(inferences=12, reports_sent=3, sessions={})
    return demo._report(model, fleet_status, 0.9712, simulator, {}, seconds_to_converge=1.5, timings={},
                        api_writes={})


def test_keys_are_spelled_snake_case_at_the_top_only() -> None:
    assert demo.snake_case({"sizeBytes": 1, "latencyMs": 2, "baseSha256": 3, "sha256": 4, "id": 5,
                            "byVariant": {"int8-static": 6}}) == {
        "size_bytes": 1, "latency_ms": 2, "base_sha256": 3, "sha256": 4, "id": 5, "by_variant": {"int8-static": 6}}


def test_the_report_gives_back_the_menu_figures_the_edgemodel_status_shows() -> None:
    shown = report({"devices": 3, "converged": 3, "byVariant": {"fp32": 3}})
    assert shown["model"] == {"held_out_accuracy": 0.9712, "base_sha256": "b" * 64, "menu_version": 3}
    fp32, int8 = shown["variants"]
    assert fp32 == {"id": "fp32", "precision": "fp32", "target": "any", "format": "onnx", "sha256": "1" * 64,
                    "size_bytes": 9000, "accuracy": 0.97, "latency_ms": 0.21, "accepted": True, "reason": ""}
    assert (int8["size_bytes"], int8["accuracy"], int8["latency_ms"], int8["accepted"]) == (3000, None, None, False)
    assert shown["fleet"]["by_variant"] == {"fp32": 3} and shown["fleet"]["devices"] == 3
