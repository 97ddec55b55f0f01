"""Pruning of unknown fields, the one schema step `tinymlops.kube.schema` leaves to the API server.

`tinymlops.kube.schema` defaults and validates; a real API server also drops the fields a structural schema does
not declare (ObjectMeta's own included), and, depending on the request's `fieldValidation`, warns about
them or refuses the request. The store does the same with `prune`, whose result names every dropped field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tinymlops.stack.emulator.builtins import OBJECT_META


def prune(schema: Mapping[str, Any], value: Any, path: str = "") -> list[str]:
    """Drop fields the structural schema does not know (as the API server does); return their paths."""
    dropped: list[str] = []
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or extra is not None or not props
        for key in list(value):
            where = f"{path}.{key}" if path else key
            if not path and key == "metadata" and isinstance(value[key], dict):
                # Every object's metadata is an ObjectMeta, whatever the CRD declares about it.
                dropped += prune(OBJECT_META, value[key], where)
            elif key in props:
                dropped += prune(props[key], value[key], where)
            elif isinstance(extra, dict):
                dropped += prune(extra, value[key], f"{path}[{key}]")
            elif not keep_unknown and not (not path and key in ("apiVersion", "kind")):
                dropped.append(where)
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            dropped += prune(schema["items"], item, f"{path}[{index}]")
    return dropped
