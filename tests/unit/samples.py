"""Sample data shared by unit tests that build operator statuses (CRD schema fit, Argo CD health checks)."""

from typing import Any

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
