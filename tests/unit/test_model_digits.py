"""The sample digits model: trained offline, small enough to ship, big enough to quantize visibly."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tinymlops.errors import SpecError
from tinymlops.model import DigitsArtifacts, prepare_digits
from tinymlops.model.digits import SEED_ENV, training_seed


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsArtifacts:
    return prepare_digits(tmp_path_factory.mktemp("digits"))


def test_writes_model_and_data_in_the_documented_format(digits: DigitsArtifacts) -> None:
    with np.load(digits.data_path) as data:
        x, y = data["x"], data["y"]
    assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 64
    assert y.dtype == np.int64 and y.shape == (x.shape[0],)
    assert x.min() >= 0.0 and x.max() <= 1.0


def test_model_is_a_plain_onnx_classifier_of_the_expected_size(digits: DigitsArtifacts) -> None:
    model = onnx.load(digits.model_path)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["probabilities"]
    assert {node.domain for node in model.graph.node} == {""}  # no ai.onnx.ml operators
    assert 150_000 <= digits.model_path.stat().st_size <= 250_000


def test_reported_accuracy_matches_onnxruntime(digits: DigitsArtifacts) -> None:
    with np.load(digits.data_path) as data:
        x, y = data["x"], data["y"]
    session = ort.InferenceSession(str(digits.model_path), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {"input": x})[0]
    assert probabilities.shape == (len(x), 10)
    onnx_accuracy = float(np.mean(probabilities.argmax(axis=1) == y))
    assert onnx_accuracy == pytest.approx(digits.test_accuracy, abs=1e-9)
    assert digits.test_accuracy > 0.95


def test_training_repeats_bit_for_bit_on_one_machine(digits: DigitsArtifacts, tmp_path: Path) -> None:
    again = prepare_digits(tmp_path)
    assert again.model_path.read_bytes() == digits.model_path.read_bytes()
    assert again.data_path.read_bytes() == digits.data_path.read_bytes()


def test_the_training_seed_comes_from_the_environment() -> None:
    assert training_seed({}) == training_seed({SEED_ENV: " "}) == 0
    assert training_seed({SEED_ENV: "11"}) == 11
    for bad in ("eleven", "-1", str(2**32)):
        with pytest.raises(SpecError, match=SEED_ENV):
            training_seed({SEED_ENV: bad})


def test_another_seed_is_another_model_on_the_same_split(
    digits: DigitsArtifacts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SEED_ENV, str(training_seed() + 1))
    retrained = prepare_digits(tmp_path)
    assert retrained.model_path.read_bytes() != digits.model_path.read_bytes()
    assert retrained.data_path.read_bytes() == digits.data_path.read_bytes()
