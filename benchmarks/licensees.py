"""Per-licensee menus benchmark: does every variant a licensee's fleet can run carry the licensee's watermark, and
what does a licensee menu cost next to the model's own?

    python benchmarks/licensees.py [--licensees acme,globex,initech] [--out benchmarks/results]

What the operator's pipeline does per licensee, in-process: the digits sample model (`tinymlops.model.digits`,
training seed 0) with its held-out DATA.npz as `spec.data`; the licensee's copy from `tinymlops.watermark.embed`
(the watermark task), then the variant factory's own matrix built from that copy (`tinymlops.variants.build_variant`,
as build_variant does): fp32, fp16, int8 static, int8 dynamic, 50 % magnitude-pruned fp32 and int8 static.  The
model's own matrix is built the same way from the unwatermarked source for comparison.

- inheritance (target: every ONNX variant of every licensee's menu named as that licensee, chance match <= 1e-6):
  `tinymlops.watermark.verify` on each variant's bytes, with the BER and trigger accuracy;
- no cross attribution (target 0): every variant of the model's own menu comes out "none", and no variant is
  named as another licensee;
- cost: the embed's CPU seconds, and the matrix's build seconds for the model and for each licensee (a licensee
  menu costs one embed plus one more matrix).  TVM variants are compiled libraries, not ONNX: `verify` cannot read
  their weights, and they are not built here (they run the same weights, compiled).

Writes licensees.json and licensees.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from tinymlops.model.digits import prepare_digits  # noqa: E402
from tinymlops.store import DirectoryStore  # noqa: E402
from tinymlops.variants import build_variant, load_dataset, load_source  # noqa: E402
from tinymlops.variants.matrix import variant_matrix  # noqa: E402
from tinymlops.watermark import WatermarkRegistry, embed, verify  # noqa: E402

VARIANTS = variant_matrix(["fp32", "fp16", "int8", "int8-dynamic"], [0.5])
KEY = hashlib.sha256(b"benchmarks/licensees.py owner key").digest()  # fixed, so a rerun gives the same copies


def build_matrix(model: bytes, data: bytes, workdir: Path) -> tuple[dict[str, bytes], float]:
    """The variant matrix of `model` (id -> bytes) and the seconds it took."""
    path = workdir / f"{hashlib.sha256(model).hexdigest()[:12]}.onnx"
    path.write_bytes(model)
    source = load_source(path)
    dataset = load_dataset(data, source)
    started = time.perf_counter()
    built = {v: build_variant(source, dataset, v, accuracy_budget=1.0).blob for v in VARIANTS}
    return built, time.perf_counter() - started


def attribute(variants: dict[str, bytes], registry: WatermarkRegistry) -> list[dict[str, Any]]:
    rows = []
    for variant_id, blob in variants.items():
        found = verify(blob, key=KEY, registry=registry)
        best = min(found.tests, key=lambda t: t.chance_match_probability, default=None)
        named = [t for t in found.tests if t.licensee == found.licensee]
        test = named[0] if named else best
        rows.append({"variant": variant_id, "named": found.licensee,
                     "chance_match_probability": found.chance_match_probability,
                     "bit_error_rate": None if test is None else test.bit_error_rate,
                     "trigger_accuracy": None if test is None else test.trigger_accuracy})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--licensees", default="acme,globex,initech")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    licensees = [name for name in args.licensees.split(",") if name]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        digits = prepare_digits(work / "digits", seed=0)
        model, data = digits.model_path.read_bytes(), digits.data_path.read_bytes()
        with np.load(digits.data_path) as arrays:
            x, y = arrays["x"].astype(np.float32), arrays["y"].astype(np.int64)
        registry = WatermarkRegistry(DirectoryStore(work / "store"))
        own, own_s = build_matrix(model, data, work)
        menus: dict[str, Any] = {}
        for licensee in licensees:
            embedded = embed(model, x, y, key=KEY, licensee=licensee, registry=registry)
            variants, matrix_s = build_matrix(embedded.model, data, work)
            menus[licensee] = {"embed_cpu_s": round(float(embedded.metrics["cpu_seconds"]), 2),
                               "matrix_s": round(matrix_s, 2), "variants": variants}
        own_rows = attribute(own, registry)
        for menu in menus.values():
            menu["attribution"] = attribute(menu.pop("variants"), registry)
    rows = [(licensee, row) for licensee, menu in menus.items() for row in menu["attribution"]]
    named_right = sum(row["named"] == licensee and row["chance_match_probability"] <= 1e-6 for licensee, row in rows)
    wrong = sum(row["named"] not in (None, licensee) for licensee, row in rows) + sum(
        row["named"] is not None for row in own_rows)
    result = {
        "model": "digits MLP 64-256-128-10, training seed 0; spec.data: its held-out DATA.npz",
        "variants": VARIANTS, "licensees": licensees, "model_matrix_s": round(own_s, 2),
        "menus": menus, "model_menu_attribution": own_rows,
        "summary": {"variants_tested": len(rows), "named_right": named_right, "wrong_or_false_attributions": wrong,
                    "worst_chance_match": max(row["chance_match_probability"] for _, row in rows),
                    "worst_bit_error_rate": max(row["bit_error_rate"] for _, row in rows),
                    "lowest_trigger_accuracy": min(row["trigger_accuracy"] for _, row in rows)},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "licensees.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Per-licensee menus",
        "",
        f"Model: {result['model']}. Each licensee's copy is embedded (`tinymlops.watermark.embed`), then the "
        f"factory builds {', '.join(VARIANTS)} from it; `watermark verify` runs on every variant's bytes.",
        "",
        "| licensee | embed CPU s | matrix s (model's own: " + f"{own_s:.1f}" + ") | variant | named | BER | "
        "trigger accuracy | chance match |",
        "|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for licensee, menu in menus.items():
        for row in menu["attribution"]:
            lines.append(f"| {licensee} | {menu['embed_cpu_s']} | {menu['matrix_s']} | {row['variant']} | "
                         f"{row['named'] or 'none'} | {row['bit_error_rate']:.3f} | {row['trigger_accuracy']:.2f} | "
                         f"{row['chance_match_probability']:.1e} |")
    lines += ["", f"The model's own menu: {sum(r['named'] is None for r in own_rows)}/{len(own_rows)} variants "
              "come out none.",
              f"Every licensee variant named right at chance match <= 1e-6: {named_right}/{len(rows)}; wrong or false "
              f"attributions: {wrong} (target 0)."]
    (args.out / "licensees.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
