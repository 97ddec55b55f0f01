"""A licensee's variants descend from the base through the watermark: their lineage says so (pure).

A watermarked menu's variants are built from the licensee's watermarked copy of
the base, so `build_variant` records that copy as their parent.  The menu's own
`base` is still the EdgeModel's source, and a reader tracing a variant back must
arrive there: `through_watermark` makes the source the parent and puts the
watermark step (`tinymlops.watermark.lineage_transform`: licensee, code length,
trigger count, never the key) before the variant's own transforms.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tinymlops.errors import IntegrityError


def through_watermark(entry: Mapping[str, Any], *, watermarked_sha256: str, source_sha256: str,
                      transform: Mapping[str, Any]) -> dict[str, Any]:
    """`entry` (a menu entry built from the watermarked copy `watermarked_sha256`) with its lineage starting at
    the source model and the watermark step first; IntegrityError when the entry was built from another model."""
    lineage = dict(entry["lineage"])
    if lineage.get("parent") != watermarked_sha256:
        raise IntegrityError(f"variant {entry.get('id')}: built from {lineage.get('parent')}, not from the "
                             f"watermarked model {watermarked_sha256}")
    if "key" in transform or "key" in (transform.get("params") or {}):
        raise IntegrityError("a lineage entry must never carry the watermark key")
    lineage.update(parent=source_sha256, transforms=[dict(transform), *lineage.get("transforms", [])])
    return {**entry, "lineage": lineage}
