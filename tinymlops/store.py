"""Artifact store: where pipelines publish variants and the operator publishes plans; the gateway serves it.

`ArtifactStore` is the interface every user of the store types against (the
operator, the gateway, the publishers); `DirectoryStore` is the embedded one, a
local directory.  Which key holds what is `tinymlops.layout`'s business.  The
digest check every reader of published bytes makes is here too (`check_digest`).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from tinymlops.errors import IntegrityError, TinyMLOpsError
from tinymlops.layout import blob_key

CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest_matches(data: bytes, expected: str) -> bool:
    """Whether `data` is exactly the bytes whose sha256 is `expected`: the one comparison behind every check."""
    return sha256_bytes(data) == expected


def check_digest(data: bytes, expected: str, *, what: str, named_by: str = "the signed menu") -> None:
    """Raise IntegrityError naming `what` unless `data` hashes to `expected`, the digest `named_by` names."""
    if not digest_matches(data, expected):
        raise IntegrityError(f"{what}: sha256 is {sha256_bytes(data)[:12]}…, {named_by} says {expected[:12]}…")


def read_json_file(path: Path, error: type[TinyMLOpsError] = IntegrityError) -> Any | None:
    """The JSON value in a state file; None when the file does not exist; `error` naming the file when the
    bytes are not JSON (the caller checks the shape it needs)."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise error(f"{path}: not JSON ({exc})") from exc


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


def normal_key(key: str) -> str:
    """`key` with `.` and `..` resolved as a path would; ValueError when it leaves the store (or is its root)."""
    normal = posixpath.normpath(key)
    if normal in (".", "..") or normal.startswith(("/", "../")):
        raise ValueError(f"store key escapes the store root: {key!r}")
    return normal


class ArtifactStore(ABC):
    """Keys to bytes.  A key is a relative path (`tinymlops.layout`); a reader never sees half-written bytes.

    Methods raise ValueError for a key that escapes the store (`normal_key`).
    """

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing what was there in one step."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the bytes under `key`; raise FileNotFoundError when absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`.  A key that is already absent is not an error: deleting is idempotent (as S3's is),
        so a withdrawal that is retried, or races another, ends in the same state."""

    @abstractmethod
    def stamp(self, key: str) -> Hashable:
        """A token that changes whenever the bytes under `key` change, for the price of a stat, not a read
        (an S3 store would use the ETag).  Raise FileNotFoundError when absent."""

    @abstractmethod
    def get_stamped(self, key: str) -> tuple[bytes, Hashable]:
        """The bytes under `key` and the `stamp` that describes exactly those bytes."""

    def put_blob(self, prefix: str, data: bytes) -> str:
        """Store `data` content-addressed under `prefix` (`layout.blob_key`) and return its sha256."""
        digest = sha256_bytes(data)
        key = blob_key(prefix, digest)
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

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    @staticmethod
    def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
        # The inode too: put() replaces by rename, so a new version is a new inode even when it lands
        # within the same mtime tick with the same size (plan generation 1 -> 2 does exactly that).
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def stamp(self, key: str) -> Hashable:
        return self._stamp(os.stat(self.path(key)))

    def get_stamped(self, key: str) -> tuple[bytes, Hashable]:
        # fstat the handle we read from, so the stamp always describes these very bytes.
        with self.path(key).open("rb") as handle:
            stamp = self._stamp(os.fstat(handle.fileno()))
            return handle.read(), stamp
