"""One small Flower simulation (Ray): three simulated devices, two rounds, one device with corrupt data.

The assertions are about what the run must do on any machine (the corrupt device's updates dropped and counted,
the others averaged, the model exported into the same graph and scored every round), not about the accuracy
training reaches here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tinymlops.errors import NotEnoughClientsError
from tinymlops.federated.run import train_federated
from tinymlops.federated.server import wait_for_clients
from tinymlops.federated.spec import parse_spec
from tinymlops.model.digits import DigitsArtifacts


class Grid:
    def __init__(self, nodes: int) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(range(self.nodes))


def test_too_few_devices_fail_saying_how_many_came() -> None:
    assert wait_for_clients(Grid(3), 3, 0) == 3  # type: ignore[arg-type]
    with pytest.raises(NotEnoughClientsError, match="2 of the 5 clients"):
        wait_for_clients(Grid(2), 5, 0)  # type: ignore[arg-type]


def test_a_small_federated_run_drops_the_corrupt_device_and_exports_the_same_graph(
        digits: DigitsArtifacts, tmp_path: Path) -> None:
    with np.load(digits.data_path) as data:
        x, y = data["x"], data["y"]
    corrupt = x[200:260].copy()
    corrupt[0, 0] = np.nan  # a broken sensor: training on it makes every weight NaN
    shards = [(x[:100], y[:100]), (x[100:200], y[100:200]), (corrupt, y[200:260])]
    spec = parse_spec({"model": {"name": "digits"}, "fleet": {"name": "sim"}, "rounds": 2,
                       "clients": {"fraction": 1.0, "min": 3}, "localEpochs": 1, "learningRate": 0.01})
    outcome = train_federated(digits.model_path.read_bytes(), shards, spec, x_eval=x[300:], y_eval=y[300:],
                              workdir=tmp_path, cpus=1)
    assert [(r.round, r.clients, r.dropped) for r in outcome.rounds] == [(1, 2, {"non-finite": 1}),
                                                                         (2, 2, {"non-finite": 1})]
    assert all(0 <= r.accuracy <= 1 and np.isfinite(r.loss) for r in outcome.rounds)
    assert outcome.epsilon is None and outcome.clients_available == 3
    exported = onnx.load_model_from_string(outcome.model)
    original = onnx.load(digits.model_path)
    assert [n.op_type for n in exported.graph.node] == [n.op_type for n in original.graph.node]
    predicted = ort.InferenceSession(outcome.model).run(None, {"input": x[300:]})[0].argmax(axis=1)
    assert np.mean(predicted == y[300:]) == pytest.approx(outcome.rounds[-1].accuracy, abs=1e-9)
