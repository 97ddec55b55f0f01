"""Kubernetes label selectors (matchLabels + matchExpressions), evaluated in memory.

They say which devices a fleet holds: the operator uses them to count a fleet's devices; each
device uses them on the signed plan to decide whether the fleet is its own.  Which variant a
device then runs is `tinymlops.selection`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str] | None) -> bool:
    """True when `labels` satisfy `selector`; an empty selector matches everything, as in Kubernetes."""
    labels = labels or {}
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or ():
        key, operator = expression["key"], expression["operator"]
        values = set(expression.get("values") or ())
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True
