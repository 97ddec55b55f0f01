"""Where a variant came from before the matrix built it: its lineage says so (pure).

Two steps can precede a variant's own transforms, in the order they happened:

- **federated-training.** A source model promoted by a FederatedTraining carries the record of that run in its
  own ONNX metadata (`TRAINING_KEY`): the training's name and uid, rounds, clients per round, strategy, ε and δ,
  base and result accuracy, and the digest of the source it started from.  The record is an allow-list
  (`TRAINING_FIELDS`): nothing else, so never a device's data nor which device sent what, can ride along.
  Riding in the model's bytes, it reaches every build of it (the pipeline, `tinymlops variants`, a licensee's
  watermarked copy, whose weights change but not its metadata), and the EdgeModel's source digest covers it.
  `training_lineage` reads it back as the lineage's first step.
- **watermark.** A watermarked menu's variants are built from the licensee's watermarked copy of the base, so
  `build_variant` records that copy as their parent.  The menu's own `base` is still the EdgeModel's source,
  and a reader tracing a variant back must arrive there: `through_watermark` makes the source the parent and
  puts the watermark step (`tinymlops.watermark.lineage_transform`: licensee, code length, trigger count, never
  the key) before the variant's own transforms, after the training that made the source.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import onnx

from tinymlops.errors import IntegrityError, InvalidModelError

TRAINING_KEY = "tinymlops.federated-training"  # the ONNX metadata_props entry holding the record
TRAINING_STEP = "federated-training"
TRAINING_FIELDS = ("namespace", "name", "uid", "generation", "parentSource", "parentSha256", "strategy",
                   "strategyParams", "secureAggregation", "rounds", "clientsPerRound", "localEpochs", "privacy",
                   "epsilon", "delta", "baseAccuracy", "accuracy")


def _checked(record: Mapping[str, Any], what: str) -> dict[str, Any]:
    unknown = sorted(set(record) - set(TRAINING_FIELDS))
    if unknown:
        raise IntegrityError(f"{what}: a training record holds only {', '.join(TRAINING_FIELDS)}; it has "
                             f"{', '.join(unknown)} too (a lineage never carries device data)")
    return {name: record[name] for name in TRAINING_FIELDS if name in record}


def stamp_training(model: bytes, record: Mapping[str, Any]) -> bytes:
    """`model` with `record` (a FederatedTraining's lineage) in its ONNX metadata; the graph is unchanged.
    IntegrityError when the record holds a field outside TRAINING_FIELDS."""
    fields = _checked(record, "stamp_training")
    proto = onnx.load_model_from_string(model)
    kept = [prop for prop in proto.metadata_props if prop.key != TRAINING_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=TRAINING_KEY, value=json.dumps(fields, sort_keys=True))
    return bytes(proto.SerializeToString())


def training_lineage(model: bytes) -> list[dict[str, Any]]:
    """The `federated-training` step of a model a FederatedTraining made ([] for any other model);
    InvalidModelError when the model's record is not a JSON object, IntegrityError when it holds other fields."""
    try:
        proto = onnx.load_model_from_string(model)
    except Exception as exc:  # protobuf's DecodeError or its backend's equivalent
        raise InvalidModelError(f"not an ONNX model ({type(exc).__name__})") from exc
    raw = next((prop.value for prop in proto.metadata_props if prop.key == TRAINING_KEY), None)
    if raw is None:
        return []
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidModelError(f"metadata {TRAINING_KEY}: not JSON ({exc.msg})") from exc
    if not isinstance(record, dict):
        raise InvalidModelError(f"metadata {TRAINING_KEY}: expected a JSON object, got {type(record).__name__}")
    return [{"name": TRAINING_STEP, "params": _checked(record, f"metadata {TRAINING_KEY}")}]


def through_watermark(entry: Mapping[str, Any], *, watermarked_sha256: str, source_sha256: str,
                      transform: Mapping[str, Any]) -> dict[str, Any]:
    """`entry` (a menu entry built from the watermarked copy `watermarked_sha256`) with its lineage starting at
    the source model and the watermark step after the source's training (if any) and before the variant's own
    transforms; IntegrityError when the entry was built from another model."""
    lineage = dict(entry["lineage"])
    if lineage.get("parent") != watermarked_sha256:
        raise IntegrityError(f"variant {entry.get('id')}: built from {lineage.get('parent')}, not from the "
                             f"watermarked model {watermarked_sha256}")
    if "key" in transform or "key" in (transform.get("params") or {}):
        raise IntegrityError("a lineage entry must never carry the watermark key")
    steps = list(lineage.get("transforms", []))
    trained = [step for step in steps if step.get("name") == TRAINING_STEP]
    rest = [step for step in steps if step.get("name") != TRAINING_STEP]
    lineage.update(parent=source_sha256, transforms=[*trained, dict(transform), *rest])
    return {**entry, "lineage": lineage}
