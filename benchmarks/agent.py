"""Device agent benchmark: the cost of trust, and the memory of a simulated device.

    python benchmarks/agent.py [--sizes 0,1000,5000,10000] [--out benchmarks/results]

1. Trusted load vs plain load, in one run: verify the menu signature, check the blob's
   sha256, unwrap the data key, decrypt (AES-256-GCM) and open the onnxruntime session,
   against opening the session on the plaintext alone (median of repeated runs), for the
   digits MLP and ResNet-8.  Target: at most 1.10x.
2. Memory per simulated device: one process per fleet size (0, 1,000, 5,000, 10,000) runs the
   fleet simulator against a gateway on a published store until every device runs a verified
   variant and has reported; the least-squares slope of peak RSS over the sizes is the whole cost
   of a device in the simulator (agent, asyncio task, edge-node share, buffers, gateway state), as
   the memory of a process sees it.
Writes agent.json and agent.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
REPEATS = 30


def _median_ms(fn: Callable[[], object]) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples), 3)


def trusted_load(name: str, model: bytes, tmp: Path) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tinymlops import envelope
    from tinymlops.menu import menu_bytes
    from tinymlops.protect import model_context, open_artifact, variant_aad
    from tinymlops.signing import sign, verify
    from tinymlops.store import check_digest, sha256_bytes
    from tinymlops.variants.evaluate import open_session

    key, device = Ed25519PrivateKey.generate(), envelope.generate_device_key()
    data_key = envelope.new_data_key()
    sealed = envelope.encrypt_artifact(model, data_key, aad=variant_aad("v"))
    context = model_context("bench", name)
    wrapped = envelope.wrap_data_key(data_key, device.public_key(), context=context)
    variant = {"id": "v", "sha256": sha256_bytes(sealed), "size_bytes": len(sealed),
               "encryption": {"key_id": envelope.data_key_id(data_key), "plaintext_sha256": sha256_bytes(model)}}
    menu = menu_bytes({"variants": [variant]})
    signature = sign(key, menu)

    def plain() -> None:
        open_session(model)

    def trusted() -> None:
        verify(key.public_key(), menu, signature, what="menu")
        check_digest(sealed, variant["sha256"], what="variant v")
        open_session(open_artifact(sealed, variant, device_key=device, wrapped=wrapped, context=context))

    plain_ms, trusted_ms = _median_ms(plain), _median_ms(trusted)
    return {"model": name, "bytes": len(model), "plain_load_ms": plain_ms, "trusted_load_ms": trusted_ms,
            "ratio": round(trusted_ms / plain_ms, 3)}


NS, MODEL, FLEET = "bench", "digits", "bench-fleet"
MEMORY_SIZES = (0, 1_000, 5_000, 10_000)


def publish(tmp: Path) -> tuple[Path, Path]:
    """A store as the operator leaves it after the first rollout step: variants, kept menu, signed plan.
    Returns the store's directory and the publisher's public key (PEM)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tinymlops.layout import kept_menu, menu_key, model_prefix, plan_key, plan_prefix, signature_key
    from tinymlops.model import prepare_digits
    from tinymlops.plan import build_plan, menu_ref, plan_bytes
    from tinymlops.signing import public_key_pem, sign
    from tinymlops.store import DirectoryStore, sha256_bytes
    from tinymlops.variants import build_variants

    key = Ed25519PrivateKey.generate()
    digits = prepare_digits(tmp / "digits")
    store = DirectoryStore(tmp / "store")
    prefix = model_prefix(NS, MODEL)
    menu = build_variants(digits.model_path, digits.data_path, store, prefix, signing_key=key,
                          model_ref=(NS, MODEL))
    menu_json, signature = store.get(menu_key(prefix)), store.get(signature_key(menu_key(prefix)))
    digest = sha256_bytes(menu_json)
    for stored, data in zip(kept_menu(NS, MODEL, digest), (menu_json, signature), strict=True):
        store.put(stored, data)
    plan = plan_bytes(build_plan(
        namespace=NS, fleet=FLEET, model=MODEL, policy={"objective": "accuracy"},
        menu=menu_ref(namespace=NS, model=MODEL, menu_sha256=digest, menu_version=int(menu["version"]), revision=1),
    ))
    plan_path = plan_key(plan_prefix(NS, FLEET))
    store.put(plan_path, plan)
    store.put(signature_key(plan_path), sign(key, plan).encode())
    (tmp / "publisher.pub.pem").write_bytes(public_key_pem(key.public_key()))
    (tmp / "samples.npy").write_bytes(_npy(np.load(digits.data_path)["x"]))
    return tmp / "store", tmp / "publisher.pub.pem"


def _npy(x: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, x.astype(np.float32))
    return buffer.getvalue()


async def simulate(devices: int, tmp: Path, timeout_s: float) -> dict[str, Any]:
    """Run `devices` simulated devices against a gateway on the published store until every one runs a
    verified variant and has reported, as in the demo (no Kubernetes API, no operator)."""
    import asyncio

    from tinymlops.fleet import FleetSimulator, make_fleet
    from tinymlops.gateway.app import Gateway
    from tinymlops.signing import load_public_key
    from tinymlops.stack.demo import poll_interval
    from tinymlops.store import DirectoryStore

    poll_s = poll_interval(devices)
    async with Gateway(DirectoryStore(tmp / "store"), offline_after_s=max(30.0, 3 * poll_s)) as gateway:
        simulator = FleetSimulator(
            make_fleet(devices), namespace=NS, fleet=FLEET, gateway_url=gateway.url,
            publisher_key=load_public_key((tmp / "publisher.pub.pem").read_bytes()),
            samples=np.load(tmp / "samples.npy"), poll_interval_s=poll_s,
        )
        await simulator.start()
        started = time.monotonic()
        try:
            # Two polls after the last device switched: every device has reported what it runs.
            while simulator.phases().get("Running", 0) < devices and time.monotonic() - started < timeout_s:
                await asyncio.sleep(0.5)
            running = simulator.phases().get("Running", 0)
            await asyncio.sleep(2 * poll_s)
        finally:
            await simulator.stop()
        return {"devices": devices, "running": running, "sessions_shared": len(simulator.sessions),
                "reports_sent": simulator.reports_sent, "seconds": round(time.monotonic() - started, 1)}


def child(devices: int, tmp: Path) -> int:
    """One fleet size in this process; prints its JSON line with the peak RSS."""
    import asyncio

    result = asyncio.run(simulate(devices, tmp, timeout_s=600))
    result["peak_rss_kb"] = peak_rss_kb()
    print(json.dumps(result))
    return 0


def peak_rss_kb() -> int:
    """This process's peak RSS (VmHWM).  Not getrusage's ru_maxrss: Linux keeps that across exec, so every
    child would start at its parent's peak (this benchmark's, after loading ResNet-8) and small fleets would
    all measure the same."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise SystemExit("no VmHWM in /proc/self/status: the memory benchmark needs Linux")


def slope(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of y over x."""
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    variance = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / variance


def memory_per_device(sizes: tuple[int, ...], tmp: Path) -> dict[str, Any]:
    """Peak RSS of one process per fleet size (same imports, same store, same gateway), and its slope: the
    whole cost of a simulated device (agent, task, edge-node share, report buffers, gateway state), not only
    its `DeviceAgent` object."""
    runs = []
    for devices in sizes:
        done = subprocess.run([sys.executable, __file__, "--child", str(devices), "--workdir", str(tmp)],
                              capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(f"the simulator with {devices} devices failed:\n{done.stderr[-2000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if runs[-1]["running"] != devices:
            raise SystemExit(f"only {runs[-1]['running']} of {devices} simulated devices converged")
    kb = slope([(run["devices"], run["peak_rss_kb"]) for run in runs])
    return {"runs": runs, "kb_per_device": round(kb, 1),
            "note": "least-squares slope of peak RSS over one process per fleet size: simulated devices and "
                    "an in-process gateway on a published store, no Kubernetes API; sessions shared by digest"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, MEMORY_SIZES)), help="fleet sizes for the RSS slope")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # one fleet size, in its own process
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args.child, args.workdir)
    from tinymlops.model import prepare_digits
    from tinymlops.model.mlperf_tiny import autoencoder, resnet8

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        digits = prepare_digits(tmp / "digits").model_path.read_bytes()
        loads = [trusted_load("digits", digits, tmp), trusted_load("resnet8", resnet8(0), tmp),
                 trusted_load("fc-autoencoder", autoencoder(0), tmp)]
        publish(tmp)
        memory = memory_per_device(tuple(int(size) for size in args.sizes.split(",")), tmp)
    result = {"trusted_load": loads, "memory": memory}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "agent.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Device agent", "", "Trusted load = verify menu signature + blob sha256 + unwrap data key + "
             "AES-256-GCM decrypt + onnxruntime session; plain = the session alone (median of "
             f"{REPEATS}).", "", "| model | bytes | plain ms | trusted ms | ratio (target ≤ 1.10) |",
             "|---|---:|---:|---:|---:|"]
    for row in loads:
        lines.append(f"| {row['model']} | {row['bytes']} | {row['plain_load_ms']} | {row['trusted_load_ms']} | "
                     f"{row['ratio']} |")
    lines += ["", "Memory of the fleet simulator (one process per size, devices until all run a verified variant "
              "and have reported, with an in-process gateway; sessions shared by digest):", "",
              "| devices | peak RSS MB | sessions | s |", "|---:|---:|---:|---:|"]
    lines += [f"| {run['devices']} | {run['peak_rss_kb'] / 1024:.1f} | {run['sessions_shared']} | {run['seconds']} |"
              for run in memory["runs"]]
    lines += ["", f"Peak RSS slope: **{memory['kb_per_device']} KB per simulated device** (target ≤ 20 KB)."]
    (args.out / "agent.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
