"""Device agent benchmark: the cost of trust, and the memory of a simulated device.

    python benchmarks/agent.py [--devices 10000] [--out benchmarks/results]

1. Trusted load vs plain load, in one run: verify the menu signature, check the blob's
   sha256, unwrap the data key, decrypt (AES-256-GCM) and open the onnxruntime session,
   against opening the session on the plaintext alone (median of repeated runs), for the
   digits MLP and ResNet-8.  Target: at most 1.10x.
2. Memory per simulated device beyond the shared sessions: tracemalloc over creating N
   device agents that have all verified the menu and installed a variant.
Writes agent.json and agent.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    from tinymlops.store import sha256_bytes
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
        if sha256_bytes(sealed) != variant["sha256"]:
            raise AssertionError("digest")
        open_session(open_artifact(sealed, variant, device_key=device, wrapped=wrapped, context=context))

    plain_ms, trusted_ms = _median_ms(plain), _median_ms(trusted)
    return {"model": name, "bytes": len(model), "plain_load_ms": plain_ms, "trusted_load_ms": trusted_ms,
            "ratio": round(trusted_ms / plain_ms, 3)}


def memory_per_device(devices: int, tmp: Path) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tinymlops.agent import DeviceAgent, SessionCache
    from tinymlops.fleet import make_fleet
    from tinymlops.menu import menu_bytes
    from tinymlops.model import prepare_digits
    from tinymlops.signing import sign
    from tinymlops.store import DirectoryStore
    from tinymlops.variants import build_variants

    key = Ed25519PrivateKey.generate()
    digits = prepare_digits(tmp / "digits")
    menu = build_variants(digits.model_path, digits.data_path, DirectoryStore(tmp / "store"), "m",
                          signing_key=key, model_ref=("bench", "m"))
    blobs = {v["sha256"]: (tmp / "store" / "m" / "blobs" / v["sha256"]).read_bytes() for v in menu["variants"]}
    payload, signature = menu_bytes(menu), sign(key, menu_bytes(menu))
    sessions = SessionCache()
    fleet = make_fleet(devices)
    for caps in fleet[:20]:  # load the shared sessions before measuring
        agent = DeviceAgent(caps, key.public_key(), sessions)
        chosen = agent.choose(agent.accept_menu(payload, signature), {"objective": "accuracy"})
        agent.install(chosen, blobs[chosen["sha256"]], 1, "warm-up")
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    agents = []
    for caps in fleet:
        agent = DeviceAgent(caps, key.public_key(), sessions)
        chosen = agent.choose(agent.accept_menu(payload, signature), {"objective": "accuracy"})
        agent.install(chosen, blobs[chosen["sha256"]], 1, "installed")
        agents.append(agent)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return {"devices": devices, "sessions_shared": len(sessions), "bytes_per_device": round(grown / devices),
            "note": "device agents after verifying the menu and installing a variant; sessions shared"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    from tinymlops.model import prepare_digits
    from tinymlops.model.mlperf_tiny import autoencoder, resnet8

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        digits = prepare_digits(tmp / "digits").model_path.read_bytes()
        loads = [trusted_load("digits", digits, tmp), trusted_load("resnet8", resnet8(0), tmp),
                 trusted_load("fc-autoencoder", autoencoder(0), tmp)]
        memory = memory_per_device(args.devices, tmp)
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
    lines += ["", f"Memory per simulated device beyond shared sessions ({memory['devices']} devices, "
              f"{memory['sessions_shared']} sessions): **{memory['bytes_per_device']} bytes** (target ≤ 20 KB)."]
    (args.out / "agent.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
