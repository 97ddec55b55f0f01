"""PATCH bodies applied to a stored object: JSON patch, merge patch, and strategic merge (as merge).

Clients send all three: kopf merge and JSON patches, kubectl strategic merge patches. Without the
built-in types' Go structs there are no per-field list strategies, so a strategic merge patch is a
merge patch that honours `$patch: delete|replace` and ignores the other directives.
All pure: the store calls `apply_patch` on a deep copy.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

from tinymlops.merge_patch import merge_patch
from tinymlops.stack.emulator.errors import error, invalid
from tinymlops.stack.emulator.resources import Obj, ResourceType


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch without the per-field list strategies: a merge patch that obeys `$patch`."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "delete":
        return None
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # $setElementOrder/..., $retainKeys, $deleteFromPrimitiveList/...
        merged = None if value is None else strategic_merge_patch(result.get(key), value)
        if merged is None:
            result.pop(key, None)
        else:
            result[key] = merged
    return result


def apply_patch(rt: ResourceType, name: str, current: Obj, content_type: str, body: Any) -> Obj:
    if content_type == "application/json-patch+json":
        if not isinstance(body, list):
            raise error(400, "BadRequest", "a JSON patch must be a list of operations")
        try:
            result = jsonpatch.JsonPatch(body).apply(current)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
            # kopf reads 422 as "the resourceVersion test failed, retry on the next cycle".
            raise invalid(rt, name, [f"<patch>: {exc}"]) from exc
        return dict(result)
    if not isinstance(body, dict):
        raise error(400, "BadRequest", "a merge patch must be a JSON object")
    if content_type == "application/merge-patch+json":
        return dict(merge_patch(current, body))
    if content_type == "application/strategic-merge-patch+json":
        return dict(strategic_merge_patch(current, body))
    raise error(415, "UnsupportedMediaType", f"the patch type {content_type!r} is not supported here")
