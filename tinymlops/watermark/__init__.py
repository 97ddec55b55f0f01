"""Per-licensee watermarks: embed a code and a trigger set in a model's weights, and name a leaker from a copy.

`embed` fine-tunes a licensee's copy (same graph, new weight values) carrying a BCH-coded payload in one layer's
weights (Uchida et al. 2017) and a key-derived trigger set (Adi et al. 2018), and records it in the
`WatermarkRegistry`; `verify` realigns a suspect's hidden units onto the base model, reads the code and runs the
triggers, and names the licensee only when a chance match is at most 1e-6 likely.  The owner's key
(`key_from_file`) is never stored.  torch and onnx2torch (the `watermark` extra) are needed to embed only;
verifying needs onnx and scipy, which the extra brings too.
"""

from __future__ import annotations

from typing import Any

from tinymlops.watermark.embed import Embedded, Parameters, embed
from tinymlops.watermark.keys import key_from_file
from tinymlops.watermark.registry import LicenseeRecord, WatermarkRegistry
from tinymlops.watermark.verify import Attribution, LicenseeTest, verify

__all__ = ["Attribution", "Embedded", "LicenseeRecord", "LicenseeTest", "Parameters", "WatermarkRegistry",
           "embed", "key_from_file", "lineage_transform", "verify"]


def lineage_transform(record: LicenseeRecord) -> dict[str, Any]:
    """The menu lineage's `transforms` entry for a watermark: what was done, never the key nor the code bits."""
    p = record.parameters
    return {"name": "watermark", "params": {
        "licensee": record.licensee, "code": p.get("code"), "code_bits": p.get("code_bits"),
        "triggers": p.get("triggers"), "trigger_seed": record.trigger_seed, "layer": p.get("layer_tensor"),
        **{name: p[name] for name in ("epochs", "learning_rate", "strength", "sharpness", "margin") if name in p}}}
