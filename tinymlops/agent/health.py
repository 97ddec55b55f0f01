"""The health check a variant passes before it may serve: its golden samples, within tolerance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tinymlops.errors import HealthCheckError
from tinymlops.runners import VariantRunner


def health_check(runner: VariantRunner, variant: Mapping[str, Any]) -> None:
    """Raise HealthCheckError naming the variant and sample unless every golden output matches."""
    check: Mapping[str, Any] = variant["health_check"]
    atol = float(check["atol"])
    for index, (sample, expected) in enumerate(zip(check["inputs"], check["outputs"], strict=True)):
        try:
            got = runner.one(np.asarray(sample, dtype=np.float32))
        except Exception as exc:  # the runtime's own error, e.g. a shape mismatch
            raise HealthCheckError(f"variant {variant['id']}: golden sample {index} does not run ({exc})") from exc
        want = np.asarray(expected, dtype=np.float32)
        if got.shape != want.shape:
            raise HealthCheckError(
                f"variant {variant['id']}: golden sample {index} gives shape {got.shape}, expected {want.shape}"
            )
        diff = float(np.max(np.abs(got - want))) if got.size else 0.0
        if not diff <= atol:  # also catches NaN
            raise HealthCheckError(
                f"variant {variant['id']}: golden sample {index} differs by {diff:.3g} (tolerance {atol:.3g})"
            )
