"""Sample data shared by the tests: a menu for operator statuses (CRD schema fit, Argo CD health checks), and
helpers that keep tests on built menus independent of what the training favoured.

The digits model is not bit-identical across CPUs, so neither is the ranking of its variants: on one
machine fp32 is more accurate than int8-static, on another they tie and int8 (smaller) wins.  A test
either derives what a device picks with the agent's own choice (`picked`), or sets the metrics its
point needs (`with_metrics`).
"""

import copy
from collections.abc import Mapping
from typing import Any

from tinymlops.devices import DeviceCapabilities
from tinymlops.selection import DeviceContext, SelectionPolicy, choose

# A menu as the pipeline publishes it: one accepted variant, one over the accuracy budget with no metrics.
MENU: dict[str, Any] = {
    "version": 3,
    "base": {"sha256": "b" * 64},
    "variants": [
        {"id": "fp32", "precision": "fp32", "target": "any", "format": "onnx", "sha256": "1" * 64,
         "size_bytes": 9000, "metrics": {"accuracy": 0.97, "latency_ms_p50": 0.21}, "accepted": True, "reason": ""},
        {"id": "int8-static", "precision": "int8", "target": "any", "format": "onnx", "sha256": "2" * 64,
         "size_bytes": 3000, "metrics": {}, "accepted": False, "reason": "accuracy drop 0.05 > budget 0.01"},
    ],
}


def picked(menu: Mapping[str, Any], caps: DeviceCapabilities,
           policy: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """The variant a device with `caps` picks from `menu` on mains power and Wi-Fi, by the very function the
    agent and the operator run.  In that context what the device holds does not change the choice."""
    selection = SelectionPolicy.from_plan(policy if policy is not None else {"objective": "accuracy"})
    return choose(menu["variants"], caps, selection, DeviceContext()).variant


def with_metrics(menu: Mapping[str, Any], metrics: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """A copy of `menu` whose variants (by id) have `metrics` merged into theirs; every id must be in the menu."""
    edited = copy.deepcopy(dict(menu))
    by_id = {variant["id"]: variant for variant in edited["variants"]}
    assert set(metrics) <= set(by_id), f"no variant {sorted(set(metrics) - set(by_id))} in the menu"
    for variant_id, values in metrics.items():
        by_id[variant_id]["metrics"].update(values)
    return edited
