"""Building variants: transform (or reuse from cache), evaluate, describe for the menu.

`build_variant` is one cell of the variant matrix (one pipeline task, named by
its variant id, see `matrix.py`);
`build_variants` runs the whole matrix in-process and publishes the signed
menu with `tinymlops.publish` (the CLI and tests use it; the pipeline runs the
same steps as tasks and publishes with the same function).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from tinymlops.errors import (
    CalibrationDataMissingError,
    FirmwareError,
    InvalidModelError,
    SpecError,
    ToolchainMissingError,
    UnsupportedOperatorError,
)
from tinymlops.publish import publish
from tinymlops.store import ArtifactStore, sha256_bytes
from tinymlops.variants.cache import VariantCache, cache_key
from tinymlops.variants.evaluate import Evaluation, evaluate
from tinymlops.variants.lineage import training_lineage
from tinymlops.variants.matrix import VariantSpec, calibrated, spec_for, variant_matrix
from tinymlops.variants.modules import FactoryModules, attach
from tinymlops.variants.monitoring import reference_monitoring
from tinymlops.variants.source import Dataset, SourceModel, load_dataset, load_source
from tinymlops.variants.split import split_entry, with_parts
from tinymlops.variants.tvm_tune import Tuning

# What the quality figure of each kind of evaluation data measures (said in every variant's reason).
MEASURES = {
    "labelled": "accuracy",
    "unlabelled": "agreement with the base",
    "synthetic": "agreement with the base on synthetic inputs (not accuracy)",
}
TOOLS = ("tinymlops", "onnx", "onnxruntime", "numpy", "apache-tvm")
# Float noise: a drop of exactly the budget is accepted.
BUDGET_EPSILON = 1e-9


def tool_versions() -> dict[str, str]:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


@dataclass(frozen=True)
class VariantBuild:
    entry: dict[str, Any]  # the variant's menu entry
    blob: bytes
    cached: bool


def _apply(spec: VariantSpec, base: SourceModel, dataset: Dataset) -> bytes:
    model = base.data
    for step in spec.steps:
        try:
            model = step.apply(model, dataset.calibration, base.input_name)
        except (SpecError, UnsupportedOperatorError, ToolchainMissingError, FirmwareError):
            raise
        except Exception as exc:  # a library's own errors say little about which model and step
            raise InvalidModelError(f"model {base.source}: {spec.id}: {step.name} failed ({exc})") from exc
    return model


def _evaluate(spec: VariantSpec, base: SourceModel, dataset: Dataset, blob: bytes,
              cache_dir: Path | None) -> Evaluation:
    if spec.format == "onnx":
        return evaluate(base.data, blob, dataset, health_atol=spec.health_atol)
    from tinymlops.variants.tvm_transform import evaluate_compiled

    return evaluate_compiled(spec, base, dataset, blob, firmware_cache=cache_dir / "firmware" if cache_dir else None)


def build_variant(
    base: SourceModel,
    dataset: Dataset,
    variant_id: str,
    *,
    accuracy_budget: float,
    cache_dir: Path | None = None,
    synthetic_calibration: bool = False,
    tuning: Tuning | None = None,
) -> VariantBuild:
    """Build and score one variant of `base`; accepted=False (with a reason) when over budget.

    Raises UnsupportedOperatorError, naming the operator, before building a variant
    whose target cannot run the graph, and CalibrationDataMissingError before calibrating one on
    synthetic inputs unless `synthetic_calibration` asks for exactly that.
    `tuning`: the MetaSchedule budget of TVM host variants, its databases cached under `cache_dir/tuning`.
    """
    if not 0.0 <= accuracy_budget <= 1.0:
        raise SpecError(f"accuracyBudget: {accuracy_budget} is not a fraction between 0 and 1")
    spec = spec_for(variant_id, tuning=tuning, tuning_dir=cache_dir / "tuning" if cache_dir else None
                    ).resolve(base.data)
    if dataset.kind == "synthetic" and spec.needs_calibration and not synthetic_calibration:
        raise CalibrationDataMissingError(synthetic_refusal([spec.id]))
    for step in spec.steps:
        step.check_supported(base.data, variant_id=spec.id)
    tools = tool_versions()
    key = cache_key(base.sha256, spec.id, {"steps": spec.lineage},
                    dataset.digest if spec.needs_calibration else None, tools)
    cache = VariantCache(cache_dir) if cache_dir else None
    blob = cache.get(base.sha256, key) if cache else None
    cached = blob is not None
    if blob is None:
        blob = _apply(spec, base, dataset)
        if cache:
            cache.put(base.sha256, key, blob)
    result = _evaluate(spec, base, dataset, blob, cache_dir)
    tuning_note = next((note for step in spec.steps if (note := getattr(step, "tuning_note", None))), None)
    if tuning_note is not None:
        result.metrics["tuning"] = tuning_note
    cpu_features = next((found for step in spec.steps if (found := getattr(step, "cpu_features", None))), None)
    if cpu_features:  # a build for this machine's CPU model: devices without these extensions must not load it
        result.requirements["cpu_features"] = cpu_features
    drop = result.base_quality - result.quality
    measure = MEASURES[dataset.kind]
    accepted = drop <= accuracy_budget + BUDGET_EPSILON and result.refusal is None
    reason = (
        f"{measure} drop {drop * 100:.2f} points within budget {accuracy_budget * 100:.2f}"
        if accepted
        else result.refusal or f"{measure} drop {drop * 100:.2f} points exceeds budget {accuracy_budget * 100:.2f}"
    )
    entry = {
        "id": spec.id,
        "sha256": sha256_bytes(blob),
        "size_bytes": len(blob),
        "format": spec.format,
        "precision": spec.precision,
        "target": spec.target,
        "metrics": result.metrics,
        # A source a FederatedTraining made starts its variants' lineage with that training (`lineage.py`).
        "lineage": {"parent": base.sha256, "transforms": [*training_lineage(base.data), *spec.lineage],
                    "tools": tools},
        "requirements": result.requirements,
        "health_check": result.health_check,
        "accepted": accepted,
        "reason": reason,
    }
    if "flash_bytes" in result.requirements:  # a microcontroller variant: its size is the flash it needs
        entry["size_bytes"] = int(result.requirements["flash_bytes"])
        entry["blob_bytes"] = len(blob)  # what is downloaded and checked (the C source)
    split = split_entry(entry, blob, dataset.evaluation)  # where it could run half on a server (`split.py`)
    if split is not None:
        entry["split"] = split
    return VariantBuild(entry=entry, blob=blob, cached=cached)


def synthetic_refusal(variant_ids: Sequence[str]) -> str:
    """Why calibrated variants are not built without data (the CLI adds the flags that change it)."""
    return (f"{', '.join(variant_ids)}: calibrated on DATA.npz, and no data was given; calibrating on random inputs "
            "loses quality that agreement on those same inputs does not show")


def not_built_entry(variant_id: str, error: Exception) -> dict[str, Any]:
    """What the menu says of a variant that could not be built for its target."""
    return {"id": variant_id, "reason": str(error)}


def build_variants(
    source: Path | bytes | str,
    data: Path | bytes | str | None,
    out: ArtifactStore,
    prefix: str,
    *,
    signing_key: Ed25519PrivateKey,
    model_ref: tuple[str, str],
    precisions: Sequence[str] = ("fp32", "int8"),
    sparsities: Sequence[float] = (),
    targets: Sequence[str] = (),
    accuracy_budget: float = 0.01,
    menu_version: int = 1,
    cache_dir: Path | None = None,
    store_root: Path | None = None,
    on_variant: Callable[[str, VariantBuild], None] | None = None,
    data_key: bytes | None = None,
    recipients: Sequence[X25519PublicKey] = (),
    synthetic_calibration: bool = False,
    expires: str | None = None,
    pre: bytes | None = None,
    post: bytes | None = None,
    split_parts: bool = False,
    tuning: Tuning | None = None,
) -> dict[str, Any]:
    """The whole variant matrix of `source`, published as a signed menu under `prefix` in `out`.

    `pre`/`post`: WebAssembly modules (DESIGN §6 ABI) every variant runs with; `data` then holds raw inputs,
    which the pre module turns into the model's (`variants/modules.py`), and the menu lists the modules.
    `split_parts`: publish each exact split point's head and tail as blobs (`variants/split.py`), for devices
    that run a split variant with the gateway's tail service; never in an encrypted menu.

    With `data_key`, every artifact is published encrypted under it and the key is wrapped
    for each of `recipients` (devices or device groups) under `prefix/keys/`. Without `data`,
    a calibrated variant is refused before anything is built, unless `synthetic_calibration`.
    The menu's `monitoring` holds the reference drift histograms of `data` (`monitoring.py`).
    """
    wanted = variant_matrix(precisions, sparsities, targets)
    base = load_source(source, store_root)
    modules = FactoryModules.load(pre, post)
    dataset = load_dataset(data, base, store_root,
                           preprocess=modules.preprocess if modules and pre is not None else None)
    if dataset.kind == "synthetic" and calibrated(wanted) and not synthetic_calibration:
        raise CalibrationDataMissingError(synthetic_refusal(calibrated(wanted)))
    builds, not_built = [], []
    for variant_id in wanted:
        try:
            built = build_variant(base, dataset, variant_id, accuracy_budget=accuracy_budget, cache_dir=cache_dir,
                                  synthetic_calibration=synthetic_calibration, tuning=tuning)
        except (UnsupportedOperatorError, ToolchainMissingError, FirmwareError) as exc:
            not_built.append(not_built_entry(variant_id, exc))
            continue
        builds.append(built)
        if on_variant:
            on_variant(variant_id, built)
    variants, blobs, entries = attach(modules, base, dataset, [b.entry for b in builds],
                                      {b.entry["sha256"]: b.blob for b in builds})
    if split_parts and data_key is None:  # head + tail are the whole model: never in an encrypted menu
        variants, blobs = with_parts(variants, blobs)
    return publish(
        out, prefix, model_ref=model_ref, version=menu_version, base=base.base_info(),
        variants=variants, blobs=blobs, modules=entries,
        not_built=not_built, signing_key=signing_key, data_key=data_key, recipients=recipients, expires=expires,
        monitoring=reference_monitoring(base, dataset, [(b.entry, b.blob) for b in builds]),
    ).menu
