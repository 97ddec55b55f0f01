"""The sample model: an MLP on scikit-learn's bundled handwritten digits, exported to ONNX.

`load_digits` ships inside scikit-learn (1,797 8x8 images), so this trains
offline in about a second.  The exported graph has one input (`input`,
float32 [N, 64], pixels scaled to [0, 1]) and one output (`probabilities`,
float32 [N, 10]); the class is its argmax.  skl2onnx also emits a `label`
output through the ai.onnx.ml ArrayFeatureExtractor; we cut it off so the
graph uses only standard operators that every ONNX runtime on a device has.

The training seed (the MLP's initial weights) is `$TINYMLOPS_DIGITS_SEED`, 0 when unset; the held-out
split never changes with it, so every model version is scored on the same data.  Training repeats
bit for bit on one machine, but not across machines: BLAS kernels differ between CPUs, and so do
the weights and which variant scores best.  Nothing that tests or demos expect may hang on that.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from tinymlops.errors import SpecError
from tinymlops.store import atomic_write

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
HIDDEN_LAYERS = (256, 128)  # ~204 KB of fp32 weights: large enough that int8 visibly shrinks it
TEST_FRACTION = 0.25
SPLIT_SEED = 0  # fixed: a retrained model (another training seed) is scored on the same held-out data
SEED_ENV = "TINYMLOPS_DIGITS_SEED"
DEFAULT_SEED = 0
MAX_SEED = 2**32 - 1  # scikit-learn's random_state range
OPSET = 17  # QDQ per-channel needs >= 13; 17 is widely supported by device runtimes


@dataclass(frozen=True)
class DigitsArtifacts:
    model_path: Path
    data_path: Path
    test_accuracy: float


def _split() -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64], NDArray[np.int64]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return x_train, x_test, y_train, y_test


def _to_onnx(classifier: Any) -> onnx.ModelProto:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    full = to_onnx(
        classifier,
        initial_types=[(INPUT_NAME, FloatTensorType([None, 64]))],
        options={id(classifier): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 1},
    )
    model = onnx.utils.Extractor(full).extract_model([INPUT_NAME], [OUTPUT_NAME])
    used = {node.domain for node in model.graph.node}
    kept = [opset for opset in model.opset_import if opset.domain in used or opset.domain == ""]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    model.producer_name, model.doc_string = "tinymlops.model.digits", "MLP on sklearn load_digits, pixels/16"
    onnx.checker.check_model(model, full_check=True)
    return model


def training_seed(environ: Mapping[str, str] = os.environ) -> int:
    """The sample model's training seed: `$TINYMLOPS_DIGITS_SEED`, or 0 when unset or empty."""
    raw = environ.get(SEED_ENV, "").strip()
    if not raw:
        return DEFAULT_SEED
    try:
        seed = int(raw)
    except ValueError:
        raise SpecError(f"{SEED_ENV}: {raw!r} is not an integer") from None
    if not 0 <= seed <= MAX_SEED:
        raise SpecError(f"{SEED_ENV}: {seed} is not between 0 and {MAX_SEED}")
    return seed


def prepare_digits(out_dir: Path, *, seed: int | None = None) -> DigitsArtifacts:
    """Train the digits MLP and write `model.onnx` and `data.npz` (held-out split) into `out_dir`.

    `seed` None is `training_seed()`.  The same seed gives the same bytes on the same machine and
    scikit-learn version, not on another CPU.  Another seed is a retrained model (other initial weights,
    same data split): what a new model version looks like to a rollout (`training_seed() + 1`, ...).
    """
    from sklearn.neural_network import MLPClassifier

    seed = training_seed() if seed is None else seed
    x_train, x_test, y_train, y_test = _split()
    classifier = MLPClassifier(hidden_layer_sizes=HIDDEN_LAYERS, random_state=seed, max_iter=300)
    classifier.fit(x_train, y_train)
    accuracy = float(classifier.score(x_test, y_test))

    out_dir.mkdir(parents=True, exist_ok=True)
    model_path, data_path = out_dir / "model.onnx", out_dir / "data.npz"
    atomic_write(model_path, _to_onnx(classifier).SerializeToString())
    buffer = io.BytesIO()
    np.savez(buffer, x=x_test, y=y_test)
    atomic_write(data_path, buffer.getvalue())
    return DigitsArtifacts(model_path=model_path, data_path=data_path, test_accuracy=accuracy)


def digits_split() -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64], NDArray[np.int64]]:
    """The fixed train/held-out split (x_train, x_test, y_train, y_test) every model version is built on."""
    return _split()


def classifier_to_onnx(classifier: Any) -> onnx.ModelProto:
    """A fitted MLPClassifier on the digits as the sample model's graph (same input, output and operators)."""
    return _to_onnx(classifier)
