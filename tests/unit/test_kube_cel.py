"""tinymlops.kube.cel: the CEL rules of a CRD schema, evaluated the way the API server does."""

from __future__ import annotations

from typing import Any

from tinymlops.kube.cel import rule_errors
from tinymlops.kube.schema import field_path

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.weights.isSorted()", "message": "weights may only grow", "fieldPath": ".weights"},
                {"rule": "self.weights.max() <= 100 && self.weights.min() >= 0 && self.weights.sum() > 0",
                 "message": "weights are percentages"},
                {"rule": "self == oldSelf", "message": "immutable"},  # transition rules need the stored object
            ],
            "properties": {
                "weights": {"type": "array", "items": {"type": "integer"}},
                "items": {"type": "array", "items": {
                    "type": "object",
                    "x-kubernetes-validations": [{"rule": "has(self.name)", "message": "items need a name"}]}},
            },
        },
    },
}


def errors(spec: dict[str, Any]) -> list[str]:
    return rule_errors(SCHEMA, {"spec": spec}, field_path)


def test_rules_hold() -> None:
    assert errors({"weights": [10, 50, 100], "items": [{"name": "a"}]}) == []


def test_broken_rules_are_named_at_their_field() -> None:
    assert errors({"weights": [50, 10]}) == ["spec.weights: Invalid value: weights may only grow"]
    assert errors({"weights": [0, 0]}) == ["spec: Invalid value: weights are percentages"]
    assert errors({"weights": [1], "items": [{"name": "a"}, {}]}) == ["spec.items[1]: Invalid value: items need a name"]


def test_a_rule_that_cannot_be_evaluated_is_reported_not_raised() -> None:
    problems = errors({"weights": "not a list"})
    assert any(p.startswith("spec: rule 'self.weights.max() <= 100") and "could not be evaluated (" in p
               and len(p) < 400 for p in problems)
