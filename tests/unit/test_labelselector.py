"""Kubernetes label selectors, as the operator and the devices evaluate them on a fleet's spec.selector."""

from typing import Any

import pytest

from tinymlops.labelselector import matches


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ({}, True),
        ({"matchLabels": {"app": "demo"}}, True),
        ({"matchLabels": {"app": "other"}}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["edge"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["edge"]}]}, False),
        ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, False),
    ],
)
def test_label_selectors_match_as_in_kubernetes(selector: dict[str, Any], expected: bool) -> None:
    assert matches(selector, {"app": "demo", "tier": "edge"}) is expected
