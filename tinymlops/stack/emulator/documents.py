"""`/version` and the OpenAPI endpoints, answered from the store's current resource types (no HTTP here).

The documents change only when a CRD is created or changed, so they are built once per set of types and
CRDs and reused. `/openapi/v2` is served as JSON; a client that accepts only the protobuf encoding gets
406 Not Acceptable, which client-go reads as "no v2 document here" (see `serve`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tinymlops.stack.emulator.errors import error
from tinymlops.stack.emulator.openapi import group_path, v2_document, v3_document, v3_index
from tinymlops.stack.emulator.resources import ResourceType
from tinymlops.stack.emulator.store import Store

# The features the emulator has are those of Kubernetes 1.29: OpenAPI v3 and server-side field validation
# (GA in 1.27), CRD validation rules with the list library (isSorted, 1.27) and fieldPath (1.28), GA in
# 1.29. It has no validation ratcheting (on by default from 1.30), so it does not claim to be newer.
MAJOR, MINOR = "1", "29"
GIT_VERSION = f"v{MAJOR}.{MINOR}.0+tinymlops"
SERVER_VERSION = {
    "major": MAJOR, "minor": MINOR, "gitVersion": GIT_VERSION, "gitCommit": "", "gitTreeState": "clean",
    "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64",
}
JSON = "application/json"


@dataclass
class Documents:
    """The OpenAPI documents of one store, rebuilt when its types or CRDs change."""

    store: Store
    _key: tuple[Any, ...] = ()
    _v3: dict[str, dict[str, Any]] = field(default_factory=dict)
    _v2: dict[str, Any] = field(default_factory=dict)

    def serve(self, path: str, accept: str) -> tuple[bytes, str] | None:
        """(body, content type) for `/version` and `/openapi/...`; None for any other path."""
        path = path.rstrip("/")
        if path == "/version":
            return _json(SERVER_VERSION)
        if not path.startswith("/openapi/"):
            return None
        self._refresh()
        if path == "/openapi/v2":
            if JSON not in accept and "*/*" not in accept and accept:
                raise error(406, "NotAcceptable", f"only {JSON} is served for /openapi/v2, not {accept}")
            return _json(self._v2)
        if path == "/openapi/v3":
            return _json(v3_index(self._v3))
        document = self._v3.get(path.removeprefix("/openapi/v3/"))
        if document is None:
            raise error(404, "NotFound", "the server could not find the requested resource")
        return _json(document)

    def _refresh(self) -> None:
        types = sorted(self.store.types.values(), key=lambda rt: rt.key)
        key = (tuple(types), self.store.crds)  # a new registry object whenever a CRD changes
        if key == self._key:
            return
        groups: dict[str, list[ResourceType]] = {}
        for rt in types:
            groups.setdefault(group_path(rt), []).append(rt)
        crds = self.store.crds
        self._v3 = {path: v3_document(members, crds, GIT_VERSION) for path, members in groups.items()}
        self._v2 = v2_document(types, crds, GIT_VERSION)
        self._key = key


def _json(document: dict[str, Any]) -> tuple[bytes, str]:
    return json.dumps(document).encode(), JSON
