"""RFC 7386 JSON merge patch, as the API server applies it (pure).

The emulator applies client patches with it, and the operator uses it to see what the server would
hold after a status patch, so it sends none that change nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def merge_patch(target: Any, patch: Any) -> Any:
    """`target` after `patch`: objects merge key by key at every depth, None deletes a key, anything else
    (lists included) replaces. Neither argument is modified."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    # Mapping, not dict: kopf hands the operator its status as a read-only mapping view.
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result
