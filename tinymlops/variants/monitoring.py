"""The menu's `monitoring` object: reference drift histograms of the build's own data.

The base model runs on the build's calibration and evaluation inputs (DATA.npz,
never device data); `tinymlops.drift.reference.build_reference` takes the bins from
the quantiles of those inputs' features and of the model's confidence, and counts
them.  Every variant of the revision is compared with the same reference: variants
are approximations of the base, and a device's inputs do not depend on which one it
runs.  Without DATA.npz the build has only uniform noise for inputs, which says
nothing about what devices will see: the menu then has no `monitoring`, and its
devices send no drift histograms.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tinymlops.drift.reference import build_reference
from tinymlops.runners import Runner
from tinymlops.variants.source import Dataset, SourceModel


def reference_monitoring(base: SourceModel, dataset: Dataset) -> dict[str, Any] | None:
    """The menu's `monitoring` for `base` over `dataset`; None when the data is synthetic."""
    if dataset.kind == "synthetic":
        return None
    # With fewer than 5 samples both parts are the whole file (source.split): count them once.
    same = dataset.calibration is dataset.evaluation
    x = dataset.evaluation if same else np.concatenate([dataset.calibration, dataset.evaluation])
    return build_reference(x, Runner.load(base.data).many(x)).to_json()
