"""Artifact store: content-addressed blobs, variant menus and rollout plans.

Layout (the same on disk and, later, under an S3 prefix):

    models/<namespace>/<edgemodel>/menu.json   the signed variant menu (DESIGN §6)
    models/<namespace>/<edgemodel>/menu.sig
    models/<namespace>/<edgemodel>/blobs/<sha256>
    plans/<namespace>/<devicefleet>/plan.json  the signed rollout plan of a fleet
    plans/<namespace>/<devicefleet>/plan.sig

Each `models/...` folder is a complete variant directory, so
`tinymlops variants verify` works on it as it is.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from tinymlops.errors import IntegrityError

CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(data: bytes, expected: str, *, what: str) -> None:
    actual = sha256_bytes(data)
    if actual != expected:
        raise IntegrityError(f"{what}: sha256 is {actual[:12]}…, the signed menu says {expected[:12]}…")


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def model_prefix(namespace: str, name: str) -> str:
    return f"models/{namespace}/{name}"


def plan_prefix(namespace: str, fleet: str) -> str:
    return f"plans/{namespace}/{fleet}"


class ArtifactStore(ABC):
    """Where pipelines publish variants and the operator publishes plans; the gateway serves it."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the bytes under `key`; raise FileNotFoundError when absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    def put_blob(self, prefix: str, data: bytes) -> str:
        """Store `data` content-addressed under `prefix/blobs/` and return its sha256."""
        digest = sha256_bytes(data)
        key = f"{prefix}/blobs/{digest}"
        if not self.exists(key):
            self.put(key, data)
        return digest


class DirectoryStore(ArtifactStore):
    """The embedded store: a local directory (served over HTTP by the gateway)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"store key escapes the store root: {key!r}")
        return path

    def put(self, key: str, data: bytes) -> None:
        atomic_write(self.path(key), data)

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()
