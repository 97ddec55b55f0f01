"""Server-side printing: the `meta.k8s.io/v1` Tables that `kubectl get` asks for.

kubectl renders what the server sends when it asks for `as=Table`, so the CRDs' additionalPrinterColumns
are evaluated here: a small subset of JSONPath, and kubectl-style ages for date columns.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tinymlops.stack.emulator.resources import Obj, ResourceType
from tinymlops.stack.emulator.selectors import dig

_FILTER = re.compile(r'^\[\?\(@\.([\w.]+)\s*==\s*["\']([^"\']*)["\']\)\]')
_STEP = re.compile(r"^(?:\.([\w-]+)|\[(\d+)\])")


def json_path(obj: Any, path: str) -> Any:
    """The subset of kubectl JSONPath used in printer columns: `.a.b`, `[0]`, `[?(@.type=="Ready")]`."""
    values: list[Any] = [obj]
    rest = path.strip().removeprefix("{").removesuffix("}")
    while rest:
        if found := _FILTER.match(rest):
            key, wanted = found.groups()
            values = [i for v in values if isinstance(v, list) for i in v if str(dig(i, key.split("."))) == wanted]
        elif found := _STEP.match(rest):
            name, index = found.groups()
            if name is not None:
                values = [v[name] for v in values if isinstance(v, dict) and name in v]
            else:
                values = [v[int(index)] for v in values if isinstance(v, list) and int(index) < len(v)]
        else:
            return None
        rest = rest[found.end():]
    return values[0] if values else None


def _age(timestamp: Any) -> str:
    try:
        then = datetime.datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def table(rt: ResourceType, objs: Sequence[Obj], rv: str, include: str) -> Obj:
    """A meta.k8s.io/v1 Table, as `kubectl get` asks for, with the CRD's printer columns."""
    columns: list[Mapping[str, Any]] = [{"name": "Name", "type": "string", "format": "name", "priority": 0}]
    columns += [{"priority": 0, **c} for c in rt.columns] or [
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "priority": 0}
    ]
    rows = []
    for obj in objs:
        cells: list[Any] = [obj["metadata"]["name"]]
        for column in columns[1:]:
            value = json_path(obj, column["jsonPath"])
            cells.append(_age(value) if column["type"] == "date" and value is not None else value)
        shown: Obj = obj
        if include != "Object":
            shown = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
        rows.append({"cells": cells, "object": shown})
    definitions = [{k: v for k, v in c.items() if k != "jsonPath"} for c in columns]
    for definition in definitions:
        definition.setdefault("description", "")
        definition.setdefault("format", "")
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": definitions,
        "rows": rows,
    }
