"""The one count of operator writes, over request records shaped like `ApiEmulator.requests`."""

from __future__ import annotations

from tinymlops.stack.writes import only_operator, operator_writes, writes_between, writes_by_request

REQUESTS = {
    ("kopf", "patch", "tinymlops.io", "devicefleets/status"): 3,  # status subresource
    ("kopf", "patch", "tinymlops.io", "devicefleets"): 1,  # an annotation removed
    ("kopf", "create", "", "events"): 4,
    ("kopf", "watch", "tinymlops.io", "devicefleets"): 2,  # reads are not writes
    ("kopf", "list", "devices.kubeedge.io", "devices"): 1,
    ("tinymlops-operator", "create", "", "secrets"): 1,
    ("tinymlops-operator", "get", "", "secrets"): 2,
    ("OpenAPI-Generator", "patch", "devices.kubeedge.io", "devices/status"): 200,  # device twins: not ours
    ("kubectl", "create", "tinymlops.io", "edgemodels"): 1,
}


def test_every_write_of_the_operators_clients_counts_and_nothing_else() -> None:
    writes = writes_by_request(REQUESTS)
    assert writes["kopf patch tinymlops.io/devicefleets/status"] == 3
    assert writes["kopf create core/events"] == 4
    assert "kopf watch tinymlops.io/devicefleets" not in writes
    assert operator_writes(writes) == 3 + 1 + 4 + 1
    assert only_operator(writes) == {
        "kopf create core/events": 4,
        "kopf patch tinymlops.io/devicefleets": 1,
        "kopf patch tinymlops.io/devicefleets/status": 3,
        "tinymlops-operator create core/secrets": 1,
    }


def test_writes_between_two_snapshots() -> None:
    before = writes_by_request(REQUESTS)
    later = dict(REQUESTS)
    later["kopf", "patch", "tinymlops.io", "devicefleets/status"] += 2
    later["kopf", "get", "tinymlops.io", "devicefleets"] = 7
    assert writes_between(before, writes_by_request(later)) == {"kopf patch tinymlops.io/devicefleets/status": 2}
    assert writes_between(before, before) == {}
