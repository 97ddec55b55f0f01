"""On-device personalisation benchmark: devices of five classes fit their own last layer on non-IID digits.

    python benchmarks/personalise.py [--slices 60,600] [--devices-per-class 3] [--alpha 0.5] [--seed 0]
                                     [--out benchmarks/results]

The bases: `tinymlops.federated.sample` (the digits MLP trained on `--slices` images, a weak and a stronger start),
each as the fp32 graph and as the factory's static int8 QDQ variant (`variants.transforms.Int8Static`,
calibrated on the held-out split).  The rest of the training images are dealt to `--devices-per-class` devices of
each of the simulator's five device classes, every class with its own label mix (Dirichlet α `--alpha`,
`federated.shards`).

Each device runs the agent's own path (`agent.personalise.personalise_agent`, the fleet's default policy with
personalisation enabled): the last layer read from the ONNX graph, a health check on the graph with its input
exposed, the fit (numpy softmax regression toward the base weights) on 75 % of its shard and the decision on the
other 25 %.  Reported per device class: devices whose head was used, local validation accuracy before and after
(the decision's own held-out samples), and accuracy on the held-out split's images drawn for that class
(`federated.sample.held_out_groups`: the class's label mix, images no device trained on), for the base and for
what the device serves after the decision; fit time (median, this machine) and head size.

Writes personalise.json and personalise.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from tinymlops.agent import DeviceAgent, SessionCache  # noqa: E402
from tinymlops.agent.device import ActiveModel  # noqa: E402
from tinymlops.agent.personalise import personalise_agent  # noqa: E402
from tinymlops.devices import DeviceCapabilities  # noqa: E402
from tinymlops.federated.sample import federated_sample  # noqa: E402
from tinymlops.fleet.profiles import DEVICE_CLASSES  # noqa: E402
from tinymlops.model.digits import INPUT_NAME  # noqa: E402
from tinymlops.personalise import PersonalisationPolicy  # noqa: E402
from tinymlops.runners import Runner  # noqa: E402
from tinymlops.store import sha256_bytes  # noqa: E402
from tinymlops.variants.transforms import Int8Static  # noqa: E402

POLICY = PersonalisationPolicy(enabled=True)
GOLDEN = 3
ATOL = {"fp32": 1e-4, "int8-static": 0.02}  # the factory's health-check tolerances (variants.matrix)


def device(model: bytes, variant_id: str, device_class: str, golden: NDArray[np.float32], atol: float) -> DeviceAgent:
    """A device agent running `model`, as `agent install` leaves it (a menu entry with golden samples)."""
    runner = Runner.load(model)
    variant = {"id": variant_id, "sha256": sha256_bytes(model), "format": "onnx", "metrics": {},
               "health_check": {"inputs": golden.tolist(), "outputs": runner.many(golden).tolist(), "atol": atol}}
    caps = DeviceCapabilities(name=f"{device_class}-bench", arch="x86_64", device_class=device_class, ram_mb=1024,
                              model_storage_kb=1 << 20)
    return DeviceAgent(caps, Ed25519PrivateKey.generate().public_key(), SessionCache(),
                       active=ActiveModel(variant, 1, runner, "benchmark", 0.0))


def accuracy(scores: NDArray[np.float32], y: NDArray[np.int64]) -> float:
    return float(np.mean(np.argmax(scores, 1) == y)) if len(y) else float("nan")


def run_variant(model: bytes, variant_id: str, sample: Any, classes: list[str]) -> dict[str, Any]:
    base = Runner.load(model)
    rows = []
    for index, ((x, y), device_class) in enumerate(zip(sample.shards, classes, strict=True)):
        agent = device(model, variant_id, device_class, sample.x_test[:GOLDEN], ATOL[variant_id])
        fit = personalise_agent(agent, model, x, y, policy=POLICY, source=f"device {index}")
        mine = sample.groups == device_class
        x_class, y_class = sample.x_test[mine], sample.y_test[mine]
        base_class = accuracy(base.many(x_class), y_class)
        if agent.personal is not None:
            _, features = agent.personal.run(x_class)
            served = accuracy(agent.personal.head.scores(features), y_class)
        else:
            served = base_class
        outcome = fit.outcome
        rows.append({"device": index, "device_class": device_class, "samples": int(len(y)),
                     "used": outcome.used, "validation_base": outcome.base_accuracy,
                     "validation_personal": outcome.personal_accuracy, "class_test_images": int(len(y_class)),
                     "class_test_base": base_class, "class_test_served": served, "fit_ms": fit.fit_ms,
                     "head_bytes": fit.head_bytes})
    summary = []
    for device_class in dict.fromkeys(classes):
        mine = [r for r in rows if r["device_class"] == device_class]
        summary.append({
            "device_class": device_class, "devices": len(mine), "used": sum(r["used"] for r in mine),
            "samples": [r["samples"] for r in mine],
            "validation_base": statistics.fmean(r["validation_base"] for r in mine),
            "validation_personal": statistics.fmean(r["validation_personal"] for r in mine),
            "class_test_base": statistics.fmean(r["class_test_base"] for r in mine),
            "class_test_served": statistics.fmean(r["class_test_served"] for r in mine),
            "fit_ms_median": statistics.median(r["fit_ms"] for r in mine),
        })
    return {"variant": variant_id, "held_out_accuracy": accuracy(base.many(sample.x_test), sample.y_test),
            "head_bytes": rows[0]["head_bytes"], "classes": summary, "devices": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", default="60,600", help="images the base is trained on, comma-separated")
    parser.add_argument("--devices-per-class", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    names = [c.name for c in DEVICE_CLASSES]
    classes = [name for name in names for _ in range(args.devices_per_class)]
    bases = []
    for size in (int(s) for s in args.slices.split(",")):
        sample = federated_sample(classes, slice_size=size, alpha=args.alpha, seed=args.seed)
        int8 = Int8Static().apply(sample.weak_model, sample.x_test, INPUT_NAME)
        bases.append({"slice": size, "variants": [run_variant(sample.weak_model, "fp32", sample, classes),
                                                  run_variant(int8, "int8-static", sample, classes)]})
        print(f"base on {size} images done", file=sys.stderr)
    config = {"slices": args.slices, "devices_per_class": args.devices_per_class, "alpha": args.alpha,
              "seed": args.seed, "policy": POLICY.to_plan()}
    result = {"config": config, "bases": bases}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "personalise.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "personalise.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def markdown(result: dict[str, Any]) -> str:
    config = result["config"]
    policy = config["policy"]
    lines = ["# On-device personalisation (digits, non-IID device classes)", "",
             f"{config['devices_per_class']} devices per device class, each with its own shard of the training "
             f"images the base did not see (Dirichlet alpha {config['alpha']} label mix per class). Each fits its "
             f"last layer on {1 - policy['validationFraction']:.0%} of its shard and keeps it only when local "
             f"validation accuracy rises by at least {policy['minImprovement'] * 100:.0f} points "
             f"(l2 {policy['l2']}, {policy['steps']} steps). Class test: the held-out images drawn for that class "
             "(its label mix), which no device trained on; served = the head where it was used, else the base.",
             ""]
    for base in result["bases"]:
        for variant in base["variants"]:
            lines += [f"## Base trained on {base['slice']} images, {variant['variant']} "
                      f"(held-out accuracy {variant['held_out_accuracy']:.2%}; head {variant['head_bytes']:,} bytes)",
                      "", "| device class | used | samples | local validation base → personal | "
                      "class test base → served | fit ms (median) |", "|---|---:|---|---|---|---:|"]
            for row in variant["classes"]:
                lines.append(
                    f"| {row['device_class']} | {row['used']}/{row['devices']} | "
                    f"{', '.join(str(n) for n in row['samples'])} | {row['validation_base']:.1%} → "
                    f"{row['validation_personal']:.1%} | {row['class_test_base']:.1%} → "
                    f"{row['class_test_served']:.1%} | {row['fit_ms_median']:.0f} |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
