"""What the emulator serves: one `ResourceType` per group/version/plural, built in or from a CRD.

The store keys its objects by these types and the request handler describes them to kmock's discovery
endpoints, so `kubectl api-resources`, short names and categories work for the built-ins and every
served version of every CustomResourceDefinition created so far.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
ResKey = tuple[str, str, str]  # group, version, plural
VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    """What discovery says about one served resource (one group/version/plural)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status: bool = False  # has the status subresource
    columns: tuple[Mapping[str, Any], ...] = ()  # additionalPrinterColumns

    @property
    def key(self) -> ResKey:
        return (self.group, self.version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """`edgemodels.tinymlops.io`, as the API server names resources in its messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


BUILTINS = (
    ResourceType("", "v1", "namespaces", "Namespace", False, ("ns",), status=True),
    ResourceType("", "v1", "nodes", "Node", False, ("no",), status=True),
    ResourceType("", "v1", "events", "Event", True, ("ev",)),
    ResourceType("", "v1", "secrets", "Secret", True),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    ResourceType("events.k8s.io", "v1", "events", "Event", True, ("ev",)),
    ResourceType(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
        ("crd", "crds"), ("api-extensions",), status=True,
    ),
)
CRDS: ResKey = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")


def crd_resource_types(crd: Mapping[str, Any]) -> list[ResourceType]:
    """One ResourceType per served version of a CustomResourceDefinition."""
    spec, names = crd["spec"], crd["spec"]["names"]
    return [
        ResourceType(
            spec["group"], version["name"], names["plural"], names["kind"], spec.get("scope") == "Namespaced",
            tuple(names.get("shortNames") or ()), tuple(names.get("categories") or ()),
            "status" in (version.get("subresources") or {}), tuple(version.get("additionalPrinterColumns") or ()),
        )
        for version in spec["versions"]
        if version.get("served", True)
    ]
