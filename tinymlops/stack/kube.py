"""A few Kubernetes calls the embedded stack makes, through the official `kubernetes` client.

Works against the local API emulator and any cluster alike: it only needs a
kubeconfig.  Plurals follow the convention every kind here uses (kind
lowercased + "s": edgemodels, devicefleets, devices, devicemodels).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException


def plural_of(kind: str) -> str:
    return kind.lower() + "s"


def load_manifests(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every YAML document of `paths`, in order, skipping empty ones."""
    docs: list[dict[str, Any]] = []
    for path in paths:
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


class Kube:
    def __init__(self, kubeconfig: Path, *, connections: int = 16) -> None:
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        # Registering a large simulated fleet uses several threads; give each a connection.
        configuration.connection_pool_maxsize = connections
        self.api = client.ApiClient(configuration)
        self.custom = client.CustomObjectsApi(self.api)

    def apply_all(self, objects: Iterable[Mapping[str, Any]], *, threads: int = 8) -> int:
        """Apply many objects concurrently (in order per object, not overall); return how many."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="apply") as pool:
            return sum(1 for _ in pool.map(self.apply, objects))

    def close(self) -> None:
        self.api.close()

    @staticmethod
    def _where(obj: Mapping[str, Any]) -> tuple[str, str, str, str]:
        group, _, version = str(obj["apiVersion"]).rpartition("/")
        return group, version, obj["metadata"].get("namespace", "default"), plural_of(str(obj["kind"]))

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create `obj`, or replace its spec and labels and set its annotations when it exists (what `kubectl
        apply` does for us): a Device registered again with a new identity key gets the new key."""
        group, version, namespace, plural = self._where(obj)
        try:
            created = self.custom.create_namespaced_custom_object(group, version, namespace, plural, dict(obj))
            return cast(dict[str, Any], created)
        except ApiException as exc:
            if exc.status != 409:
                raise
        metadata = {"labels": obj["metadata"].get("labels") or {}}
        if obj["metadata"].get("annotations"):
            metadata["annotations"] = obj["metadata"]["annotations"]
        patch = {"metadata": metadata, "spec": obj.get("spec") or {}}
        patched = self.custom.patch_namespaced_custom_object(
            group, version, namespace, plural, obj["metadata"]["name"], patch
        )
        return cast(dict[str, Any], patched)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        group, _, version = api_version.rpartition("/")
        try:
            found = self.custom.get_namespaced_custom_object(group, version, namespace, plural_of(kind), name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return cast(dict[str, Any], found)

    def patch(self, api_version: str, kind: str, namespace: str, name: str, body: Mapping[str, Any]) -> None:
        """Merge-patch the object (e.g. `{"metadata": {"annotations": {...}}}`, as `kubectl annotate` does)."""
        group, _, version = api_version.rpartition("/")
        self.custom.patch_namespaced_custom_object(group, version, namespace, plural_of(kind), name, dict(body))

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge `status` into the object's status subresource."""
        group, _, version = api_version.rpartition("/")
        self.custom.patch_namespaced_custom_object_status(
            group, version, namespace, plural_of(kind), name, {"status": dict(status)}
        )

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        group, _, version = api_version.rpartition("/")
        try:
            self.custom.delete_namespaced_custom_object(group, version, namespace, plural_of(kind), name)
        except ApiException as exc:
            if exc.status != 404:
                raise
