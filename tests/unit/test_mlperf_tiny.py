"""The MLPerf Tiny reference architectures build as valid ONNX with the reference sizes."""

import onnx
import pytest

from tinymlops.model.mlperf_tiny import MODELS, autoencoder, resnet8, synthetic_inputs
from tinymlops.variants.evaluate import Runner, graph_stats


@pytest.mark.parametrize(("name", "params"), [("resnet8", 77_706), ("ds-cnn", 22_604), ("fc-autoencoder", 265_864)])
def test_architectures_run_with_their_reference_parameter_counts(name: str, params: int) -> None:
    build, shape = MODELS[name]
    model = build(0)
    onnx.checker.check_model(onnx.load_model_from_string(model), full_check=True)
    assert graph_stats(model)["params"] == params
    out = Runner.load(model).many(synthetic_inputs(shape, count=4))
    assert out.shape[0] == 4 and out.shape[1] in (10, 12, 640)


def test_weights_are_seeded() -> None:
    assert resnet8(0) == resnet8(0) and resnet8(0) != resnet8(1)
    assert "Conv" not in graph_stats(autoencoder(0))["op_histogram"]
