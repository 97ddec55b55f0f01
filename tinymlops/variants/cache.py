"""A local, digest-keyed cache of transform outputs.

Rebuilding the same base with the same transform, parameters, calibration
inputs and tool versions returns the very same bytes, so devices see the
same digest and download nothing.  Layout: `<cache_dir>/<base sha256>/<key>.onnx`
where key = sha256 of the canonical JSON of everything that shapes the output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinymlops.store import atomic_write, sha256_bytes


def cache_key(base_sha256: str, transform: str, params: dict[str, Any], calibration: str | None,
              tools: dict[str, str]) -> str:
    material = {"base": base_sha256, "transform": transform, "params": params,
                "calibration": calibration, "tools": tools}
    return sha256_bytes(json.dumps(material, sort_keys=True, separators=(",", ":")).encode())


class VariantCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, base_sha256: str, key: str) -> Path:
        return self.root / base_sha256 / f"{key}.onnx"

    def get(self, base_sha256: str, key: str) -> bytes | None:
        try:
            return self.path(base_sha256, key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, base_sha256: str, key: str, data: bytes) -> None:
        # Atomic: two pipeline tasks building the same key concurrently both write whole files.
        atomic_write(self.path(base_sha256, key), data)
