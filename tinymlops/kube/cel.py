"""CRD validation rules (`x-kubernetes-validations`, CEL) evaluated in-process, as the API server does (pure).

The API server runs each rule with `self` bound to the value at the schema node that declares it; a rule
that returns false rejects the object with the rule's message, at that field.  We evaluate the same
rules with cel-python and the Kubernetes list functions our rules use (`isSorted`, `min`, `max`, `sum`),
so the emulator and the tests reject what a real cluster rejects.  Transition rules (`oldSelf`)
need the stored object and are left to the API server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any

Rule = Mapping[str, Any]


def _kubernetes_list_functions() -> dict[str, Callable[..., Any]]:
    from celpy import celtypes

    def is_sorted(items: Any) -> Any:
        values = list(items)
        return celtypes.BoolType(all(a <= b for a, b in zip(values, values[1:], strict=False)))

    return {"isSorted": is_sorted, "max": lambda items: max(items), "min": lambda items: min(items),
            "sum": lambda items: sum(items[1:], items[0]) if len(items) else celtypes.IntType(0)}


@cache
def _program(rule: str) -> Any:
    import celpy

    environment = celpy.Environment()
    return environment.program(environment.compile(rule), functions=_kubernetes_list_functions())


def _nodes(schema: Mapping[str, Any], value: Any, path: list[str | int]) -> Iterator[tuple[Mapping[str, Any], Any,
                                                                                         list[str | int]]]:
    """Every (schema node, value, path) pair where the object has a value."""
    yield schema, value, path
    if isinstance(value, Mapping):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key) or (extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                yield from _nodes(sub, item, [*path, key])
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            yield from _nodes(schema["items"], item, [*path, index])


def rule_errors(schema: Mapping[str, Any], obj: Any, where: Callable[[list[str | int]], str]) -> list[str]:
    """Messages of the rules `obj` breaks, each at its field (`where` renders a path)."""
    from celpy.adapter import json_to_cel
    from celpy.evaluation import CELEvalError

    found: list[str] = []
    for node, value, path in _nodes(schema, obj, []):
        for rule in node.get("x-kubernetes-validations") or ():
            text = str(rule["rule"])
            if "oldSelf" in text:
                continue
            try:
                ok = _program(text).evaluate({"self": json_to_cel(value)})
            except CELEvalError as exc:
                # cel-python nests its causes; the first line of the innermost one says what went wrong.
                detail = str(exc.args[0] if exc.args else exc).splitlines()[0][:160]
                found.append(f"{where(path)}: rule {text!r} could not be evaluated ({detail})")
                continue
            if not bool(ok):
                field = where([*path, *str(rule.get("fieldPath", "")).lstrip(".").split(".")]) if rule.get(
                    "fieldPath") else where(path)
                found.append(f"{field}: Invalid value: {rule.get('message') or 'failed rule: ' + text}")
    return found
