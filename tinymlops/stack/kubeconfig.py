"""A kubeconfig that points kubectl, kopf and the Kubernetes client at a local, plain-HTTP API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONTEXT = "tinymlops-local"
TOKEN = "tinymlops-local-token"  # the emulator accepts any token; clients insist on having some credential


def kubeconfig(server: str, *, name: str = CONTEXT, namespace: str = "default") -> dict[str, Any]:
    """One cluster, one user, one context, all called `name`, selected as the current context."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": name, "cluster": {"server": server}}],
        "users": [{"name": name, "user": {"token": TOKEN}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}],
        "current-context": name,
    }


def write_kubeconfig(path: Path, server: str, *, name: str = CONTEXT) -> Path:
    """Write the kubeconfig for `server` to `path` (owner-only, like kubectl does) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(kubeconfig(server, name=name), sort_keys=False))
    path.chmod(0o600)
    return path
