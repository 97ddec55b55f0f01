"""The menu's `monitoring` object: reference drift histograms of the build's own data.

The base model runs on the build's calibration and evaluation inputs (DATA.npz,
never device data); `tinymlops.drift.reference.build_reference` takes the bins from
the quantiles of those inputs' features and of the base model's confidence, counts
them, and records whether the base's outputs are probabilities or logits (once, for
every device).  Each variant the build host can run (`host_runner`: ONNX variants,
and a TVM library compiled for this host's architecture) also runs on the same
inputs, and its confidence and class counts in the same bins become its own output
reference (`outputs`, keyed by `variant_sha256`): a device's inputs do not depend on
the variant it runs, but its outputs do, and an int8 fleet must be compared with
int8's outputs.  Variants the host cannot run (a C source, a TVM library for another
architecture) have none; the fleet then compares them with the base's.  Blobs are the
plaintext models (the build has them before `publish` encrypts anything).  Without
DATA.npz the build has only uniform noise for inputs, which says nothing about what
devices will see: the menu then has no `monitoring`, and its devices send no drift
histograms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tinymlops.drift.reference import build_reference, variant_sha256
from tinymlops.errors import ToolchainMissingError
from tinymlops.runners import Runner, VariantRunner
from tinymlops.variants.source import Dataset, SourceModel


def host_runner(entry: Mapping[str, Any], blob: bytes, base: SourceModel) -> VariantRunner | None:
    """A runner for the variant `entry` (its plaintext `blob`) on this build host, or None when it cannot run
    here."""
    if entry.get("format") == "onnx":
        return Runner.load(blob)
    if entry.get("format") == "tvm-lib":
        from tinymlops.variants import tvm
        from tinymlops.variants.tvm_transform import HOST_ARCH

        if tvm.target_spec(str(entry["target"])).arch != HOST_ARCH:
            return None
        try:
            return tvm.TvmRunner.load(blob, input_name=base.input_name,
                                      output_name=Runner.load(base.data).output_name)
        except ToolchainMissingError:
            return None
    return None


def reference_monitoring(base: SourceModel, dataset: Dataset,
                         variants: Sequence[tuple[Mapping[str, Any], bytes]] = ()) -> dict[str, Any] | None:
    """The menu's `monitoring` for `base` over `dataset`, with the output reference of each of `variants`
    (menu entry, plaintext blob) this host can run; None when the data is synthetic."""
    if dataset.kind == "synthetic":
        return None
    # With fewer than 5 samples both parts are the whole file (source.split): count them once.
    same = dataset.calibration is dataset.evaluation
    x = dataset.evaluation if same else np.concatenate([dataset.calibration, dataset.evaluation])
    outputs = {}
    for entry, blob in variants:
        runner = host_runner(entry, blob, base)
        if runner is not None:
            outputs[variant_sha256(entry)] = runner.many(x)
    return build_reference(x, Runner.load(base.data).many(x), variants=outputs).to_json()
