"""Building variants: transform (or reuse from cache), evaluate, describe for the menu.

`build_variant` is one cell of the variant matrix (one pipeline task);
`build_variants` runs the whole matrix in-process and publishes the signed
menu (the CLI and tests use it; the pipeline runs the same steps as tasks).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tinymlops.errors import InvalidModelError, SpecError
from tinymlops.menu import assemble_menu, write_menu
from tinymlops.store import ArtifactStore, sha256_bytes
from tinymlops.variants.cache import VariantCache, cache_key
from tinymlops.variants.evaluate import evaluate
from tinymlops.variants.source import Dataset, SourceModel, load_dataset, load_source
from tinymlops.variants.transforms import transform_for

TOOLS = ("tinymlops", "onnx", "onnxruntime", "numpy")
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


def build_variant(
    base: SourceModel,
    dataset: Dataset,
    precision: str,
    *,
    accuracy_budget: float,
    cache_dir: Path | None = None,
) -> VariantBuild:
    """Build and score one precision of `base`; accepted=False (with a reason) when over budget."""
    if not 0.0 <= accuracy_budget <= 1.0:
        raise SpecError(f"accuracyBudget: {accuracy_budget} is not a fraction between 0 and 1")
    transform = transform_for(precision).resolve(base.data)
    tools = tool_versions()
    key = cache_key(base.sha256, transform.name, transform.params,
                    dataset.digest if transform.needs_calibration else None, tools)
    cache = VariantCache(cache_dir) if cache_dir else None
    blob = cache.get(base.sha256, key) if cache else None
    cached = blob is not None
    if blob is None:
        try:
            blob = transform.apply(base.data, dataset.calibration, base.input_name)
        except Exception as exc:  # the quantizer's own errors say little about which model
            raise InvalidModelError(f"model {base.source}: {transform.variant_id} transform failed ({exc})") from exc
        if cache:
            cache.put(base.sha256, key, blob)
    result = evaluate(base.data, blob, dataset, health_atol=transform.health_atol)
    drop = result.base_quality - result.quality
    measure = "accuracy" if dataset.labels is not None else "agreement with the base"
    accepted = drop <= accuracy_budget + BUDGET_EPSILON
    reason = (
        f"{measure} drop {drop * 100:.2f} points within budget {accuracy_budget * 100:.2f}"
        if accepted
        else f"{measure} drop {drop * 100:.2f} points exceeds budget {accuracy_budget * 100:.2f}"
    )
    entry = {
        "id": transform.variant_id,
        "sha256": sha256_bytes(blob),
        "size_bytes": len(blob),
        "format": "onnx",
        "precision": transform.precision,
        "target": "any",
        "metrics": result.metrics,
        "lineage": {"parent": base.sha256, "transforms": transform.lineage, "tools": tools},
        "requirements": result.requirements,
        "health_check": result.health_check,
        "accepted": accepted,
        "reason": reason,
    }
    return VariantBuild(entry=entry, blob=blob, cached=cached)


def check_precisions(precisions: Sequence[str]) -> list[str]:
    if not precisions:
        raise SpecError("spec.variants.precisions: at least one precision is needed")
    if len(set(precisions)) != len(precisions):
        raise SpecError(f"spec.variants.precisions: {list(precisions)} lists a precision twice")
    for precision in precisions:
        transform_for(precision)
    return list(precisions)


def build_variants(
    source: Path | bytes | str,
    data: Path | bytes | str | None,
    out: ArtifactStore,
    prefix: str,
    *,
    signing_key: Ed25519PrivateKey,
    model_ref: tuple[str, str],
    precisions: Sequence[str] = ("fp32", "int8"),
    accuracy_budget: float = 0.01,
    menu_version: int = 1,
    cache_dir: Path | None = None,
    store_root: Path | None = None,
    on_variant: Callable[[str, VariantBuild], None] | None = None,
) -> dict[str, Any]:
    """The whole variant matrix of `source`, published as a signed menu under `prefix` in `out`."""
    wanted = check_precisions(precisions)
    base = load_source(source, store_root)
    dataset = load_dataset(data, base, store_root)
    builds = []
    for precision in wanted:
        built = build_variant(base, dataset, precision, accuracy_budget=accuracy_budget, cache_dir=cache_dir)
        builds.append(built)
        if on_variant:
            on_variant(precision, built)
    menu = assemble_menu(
        model_ref=model_ref, version=menu_version, base=base.base_info(), variants=[b.entry for b in builds]
    )
    write_menu(out, prefix, menu, {b.entry["sha256"]: b.blob for b in builds}, signing_key)
    return menu
