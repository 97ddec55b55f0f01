"""build_variant: one cell of the variant matrix (one variant id), transformed and scored."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from tinymlops_pipelines.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def build_variant(
    base: Input[Model],
    data: Input[Dataset],
    variant_id: str,
    accuracy_budget: float,
    cache_dir: str,
    variant: Output[Model],
    tuning_trials: int = 0,
    tuning_time_budget_s: float = 0.0,
) -> str:
    """Write the variant's bytes to `variant` and return its menu entry as JSON.

    A variant its target cannot run (an unsupported operator) is not a failed run: the
    task returns {"id", "reason", "not_built": true} and an empty artifact. So is a calibrated
    variant (static int8) of an EdgeModel without spec.data: calibrating on noise is refused.
    A `base` whose metadata has a `watermark` (the watermark task's) is a licensee's watermarked copy: the
    entry's lineage then starts at the source model with the watermark step (`tinymlops.variants.lineage`).
    `tuning_trials` > 0: MetaSchedule-tune TVM host variants within that many trials and `tuning_time_budget_s`.
    """
    import dataclasses
    import json
    from pathlib import Path

    from tinymlops.errors import (
        CalibrationDataMissingError,
        FirmwareError,
        ToolchainMissingError,
        UnsupportedOperatorError,
    )
    from tinymlops.variants import build_variant as build
    from tinymlops.variants import load_dataset, load_source
    from tinymlops.variants.lineage import through_watermark
    from tinymlops.variants.tvm_tune import Tuning
    from tinymlops_pipelines.errors import reported_errors

    with reported_errors():
        model = dataclasses.replace(load_source(Path(base.path)), source=str(base.metadata.get("source", "")))
        dataset = load_dataset(Path(data.path) if data.metadata.get("present") else None, model)
        try:
            built = build(model, dataset, variant_id, accuracy_budget=accuracy_budget,
                          cache_dir=Path(cache_dir) if cache_dir else None,
                          tuning=Tuning(tuning_trials, tuning_time_budget_s) if tuning_trials > 0 else None)
        except (UnsupportedOperatorError, ToolchainMissingError, FirmwareError, CalibrationDataMissingError) as exc:
            reason = str(exc)
            if isinstance(exc, CalibrationDataMissingError):
                reason += " (give the EdgeModel spec.data)"
            Path(variant.path).write_bytes(b"")
            variant.metadata.update({"id": variant_id, "built": False})
            return json.dumps({"id": variant_id, "reason": reason, "not_built": True}, sort_keys=True)
        entry = built.entry
        step = base.metadata.get("watermark")
        if step:
            entry = through_watermark(entry, watermarked_sha256=step["watermarked_sha256"],
                                      source_sha256=step["source_sha256"], transform=step["transform"])
    Path(variant.path).write_bytes(built.blob)
    variant.metadata.update({"id": built.entry["id"], "sha256": built.entry["sha256"],
                             "accepted": built.entry["accepted"], "cached": built.cached})
    return json.dumps(entry, sort_keys=True)
