"""Federated training on real SuperNodes: what Flower's deployment runtime costs over its simulation engine.

    python benchmarks/federated_superlink.py [--devices 4] [--rounds 3] [--local-epochs 5] [--out benchmarks/results]

The start is the federated sample (`tinymlops.federated.sample`: the weak digits MLP, the other training images
dealt non-IID to `--devices` devices).  Real: a `flower-superlink` with TLS and SuperNode authentication
(`LocalSuperLink`), each device's bound node key registered, and one `tinymlops agent federate` process per
device (a real `flower-supernode`, its SuperExec and a ClientApp process per round) on this host; the run is
submitted as the operator submits it (`train_on_superlink`).  Simulation: the same spec and shards through
Flower's simulation engine (`train_federated`, 2 CPUs).  Both: wall time from submission to the exported model
(the SuperLink's and the SuperNodes' start-up reported apart), seconds per round, peak resident memory of this
process and all its descendants, and the held-out accuracy after the last round.

Writes federated_superlink.json and federated_superlink.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from federated import TreeMemory  # noqa: E402 (the same memory sampler as the simulation benchmark)

CONTEXT = {"battery_pct": None, "charging": True, "network": "wifi", "idle": True}


def _device(root: Path, name: str, shard: tuple[Any, Any]) -> tuple[Path, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tinymlops.agent.standalone import save_policy
    from tinymlops.signing import IDENTITY_KEY_FILE, private_key_pem

    state = root / name
    state.mkdir(parents=True)
    identity = Ed25519PrivateKey.generate()
    (state / IDENTITY_KEY_FILE).write_bytes(private_key_pem(identity))
    save_policy(state, {"federated": {"consent": True}})
    np.savez(state / "data.npz", x=shard[0], y=shard[1])
    (state / "context.json").write_text(json.dumps(CONTEXT))
    return state, identity


def real(sample: Any, spec: Any, devices: int) -> dict[str, Any]:
    from tinymlops.federated.deployed import train_on_superlink
    from tinymlops.federated.nodekey import ensure_node_key, verified_node_key
    from tinymlops.federated.superlink import LocalSuperLink

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "operator"), str(ROOT / "pipelines")])}
    with tempfile.TemporaryDirectory() as tmp, TreeMemory() as memory:
        root = Path(tmp)
        started = time.monotonic()
        link = LocalSuperLink(root / "superlink").start()
        superlink_up = time.monotonic() - started
        agents = []
        try:
            for index, shard in enumerate(sample.shards):
                state, identity = _device(root, f"dev{index}", shard)
                binding = ensure_node_key(state, identity).binding
                link.register(verified_node_key(binding, identity.public_key(), source=state.name))
                agents.append(subprocess.Popen(
                    [sys.executable, "-m", "tinymlops", "agent", "federate", "--state-dir", str(state),
                     "--superlink", link.address, "--data", str(state / "data.npz"), "--context",
                     str(state / "context.json"), "--root-certificates", str(link.ca_path)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
            submitted = time.monotonic()
            outcome = train_on_superlink(link, sample.weak_model, spec, x_eval=sample.x_test, y_eval=sample.y_test,
                                         run_dir=root / "run", what="weak digits")
            wall = time.monotonic() - submitted
        finally:
            for agent in agents:
                agent.send_signal(signal.SIGTERM)
            for agent in agents:
                agent.wait(timeout=60)
            link.stop()
    return {"superlink_start_s": round(superlink_up, 1), "wall_s": round(wall, 1),
            "s_per_round": round(wall / spec.rounds, 1), "peak_rss_mib": round(memory.peak / 2**20),
            "clients_available": outcome.clients_available, "base_accuracy": round(outcome.base_accuracy, 4),
            "accuracy": round(outcome.accuracy, 4), "rounds": [r.as_dict() for r in outcome.rounds]}


def simulated(sample: Any, spec: Any) -> dict[str, Any]:
    from tinymlops.federated.run import train_federated

    with tempfile.TemporaryDirectory() as tmp, TreeMemory() as memory:
        started = time.monotonic()
        outcome = train_federated(sample.weak_model, sample.shards, spec, x_eval=sample.x_test,
                                  y_eval=sample.y_test, workdir=Path(tmp), cpus=2)
        wall = time.monotonic() - started
    return {"wall_s": round(wall, 1), "s_per_round": round(wall / spec.rounds, 1),
            "peak_rss_mib": round(memory.peak / 2**20), "accuracy": round(outcome.accuracy, 4),
            "rounds": [r.as_dict() for r in outcome.rounds]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from tinymlops.federated.sample import federated_sample
    from tinymlops.federated.spec import parse_spec

    classes = ["rpi4", "jetson", "phone", "mcu"]
    sample = federated_sample([classes[i % len(classes)] for i in range(args.devices)], slice_size=60, seed=0)
    spec = parse_spec({"model": {"name": "digits"}, "fleet": {"name": "bench"}, "rounds": args.rounds,
                       "clients": {"fraction": 1.0, "min": args.devices}, "localEpochs": args.local_epochs,
                       "learningRate": 0.1, "batchSize": 8, "waitForClientsSeconds": 120})
    result = {"devices": args.devices, "rounds": args.rounds, "local_epochs": args.local_epochs,
              "cpus": os.cpu_count(), "load_average_at_start": round(os.getloadavg()[0], 1),
              "superlink": real(sample, spec, args.devices), "simulation": simulated(sample, spec)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "federated_superlink.json").write_text(json.dumps(result, indent=2) + "\n")
    link, sim = result["superlink"], result["simulation"]
    lines = [
        "# Federated training on real SuperNodes",
        "",
        f"`python benchmarks/federated_superlink.py --devices {args.devices} --rounds {args.rounds} "
        f"--local-epochs {args.local_epochs}` on {result['cpus']} CPUs (load average "
        f"{result['load_average_at_start']} at the start: the host is shared), the weak digits model, non-IID shards, "
        "FedAvg, every device every round.",
        "",
        "| runtime | wall (submission to model) | s per round | peak RSS (process tree) | held-out accuracy |",
        "|---|---|---|---|---|",
        f"| SuperLink + {args.devices} `agent federate` SuperNodes (TLS, node auth) | {link['wall_s']} s | "
        f"{link['s_per_round']} | {link['peak_rss_mib']} MiB | {link['base_accuracy']:.2%} -> {link['accuracy']:.2%} |",
        f"| Flower simulation engine (Ray, 2 CPUs) | {sim['wall_s']} s | {sim['s_per_round']} | "
        f"{sim['peak_rss_mib']} MiB | {sim['accuracy']:.2%} |",
        "",
        f"Starting the SuperLink (certificate, process, first Control API answer): {link['superlink_start_s']} s, "
        "before submission. On real SuperNodes each round starts a ClientApp process per device (it imports torch "
        "and onnx2torch), and every device's processes (agent, SuperNode, SuperExec, ClientApp) share this host's "
        "cores and memory: the peak RSS is the sum over all the devices and the SuperLink, where a real device holds "
        "only its own share.",
        "",
        "Accuracy per round (SuperLink / simulation): "
        + ", ".join(f"{a['accuracy']:.2%} / {b['accuracy']:.2%}" for a, b in zip(link["rounds"], sim["rounds"],
                                                                               strict=True)),
    ]
    (args.out / "federated_superlink.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
