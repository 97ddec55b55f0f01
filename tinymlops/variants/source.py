"""The inputs of a variant build: the base ONNX model and DATA.npz, resolved and checked.

Every failure names its source, so the operator can put the message in a
condition as it is.  Source URIs: `store://<key>` (a key in the artifact
store), `file:///abs/path`, a plain absolute path, or `http(s)://...`.

DATA.npz split (deterministic, no shuffling): sample i calibrates the int8
quantizer when i % 5 == 0 (at most CALIBRATION_MAX of them) and evaluates
every variant otherwise, so no variant is scored on the samples it was
calibrated on.  With fewer than 5 samples both parts are the whole file.
Without DATA.npz, SYNTHETIC_SAMPLES uniform [0, 1) inputs (seed 0) stand in:
there is no accuracy then, only agreement with the base on those inputs, and
a variant that is calibrated on its data (static int8) is built only when the
caller asks for it (`synthetic_calibration`): calibrating on noise loses
quality that agreement on the same noise does not show.
"""

from __future__ import annotations

import io
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray

from tinymlops.errors import InvalidDataError, InvalidModelError
from tinymlops.store import sha256_bytes

CALIBRATION_EVERY = 5
CALIBRATION_MAX = 256
SYNTHETIC_SAMPLES = 64
MAX_FETCH_BYTES = 512 << 20
FLOAT_TYPES = {onnx.TensorProto.FLOAT: np.float32}
DATA_FORMAT = "a .npz file with array `x` (float32, batch first) and optional `y` (int64 labels)"


@dataclass(frozen=True)
class SourceModel:
    """A validated base model: its bytes, where it came from, and its single input."""

    data: bytes
    source: str
    input_name: str
    input_shape: tuple[int | None, ...]  # None for a symbolic dimension

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.data)

    def base_info(self) -> dict[str, object]:
        return {"sha256": self.sha256, "size_bytes": len(self.data), "source": self.source}


@dataclass(frozen=True)
class Dataset:
    """Inputs (and labels when known) split into a calibration part and an evaluation part."""

    calibration: NDArray[np.float32]
    evaluation: NDArray[np.float32]
    labels: NDArray[np.int64] | None  # labels of the evaluation part
    kind: str  # "labelled", "unlabelled" or "synthetic"
    # The evaluation part as DATA.npz holds it, before a pre module made `evaluation` of it; None: no pre module.
    raw_evaluation: NDArray[np.float32] | None = None

    @property
    def digest(self) -> str:
        """Identifies the calibration inputs, part of the variant cache key."""
        return sha256_bytes(np.ascontiguousarray(self.calibration).tobytes())


def resolve_uri(uri: str, store_root: Path | None) -> bytes:
    """Read the bytes a source or data URI points to; FileNotFoundError/OSError when it cannot."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "store":
        if store_root is None:
            raise FileNotFoundError(f"{uri}: store:// needs an artifact store root")
        root = store_root.resolve()
        path = (root / (parsed.netloc + parsed.path).lstrip("/")).resolve()
        if root not in path.parents:
            raise FileNotFoundError(f"{uri}: key escapes the artifact store")
        return path.read_bytes()
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path)).read_bytes()
    if parsed.scheme in ("http", "https"):
        with urllib.request.urlopen(uri, timeout=30) as response:  # noqa: S310 (scheme checked above)
            data: bytes = response.read(MAX_FETCH_BYTES + 1)
        if len(data) > MAX_FETCH_BYTES:
            raise OSError(f"{uri}: larger than {MAX_FETCH_BYTES} bytes")
        return data
    if parsed.scheme == "" and Path(uri).is_absolute():
        return Path(uri).read_bytes()
    raise FileNotFoundError(f"{uri}: unsupported URI (use store://KEY, file:///PATH, an absolute path or http(s)://)")


def read_source(source: str | Path | bytes, store_root: Path | None = None) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, "<bytes>"
    name = str(source)
    try:
        data = Path(source).read_bytes() if isinstance(source, Path) else resolve_uri(name, store_root)
    except OSError as exc:
        raise InvalidModelError(f"model {name}: cannot be read ({exc.strerror or exc})") from exc
    return data, name


def load_source(source: str | Path | bytes, store_root: Path | None = None) -> SourceModel:
    """Read and check the base model; InvalidModelError naming `source` when it is not usable ONNX."""
    data, name = read_source(source, store_root)
    try:
        model = onnx.load_model_from_string(data)
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, InferenceError...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"model {name}: not a valid ONNX model ({first_line})") from exc
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise InvalidModelError(f"model {name}: has {len(inputs)} inputs; DATA.npz feeds exactly one (x)")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type not in FLOAT_TYPES:
        raise InvalidModelError(f"model {name}: input {inputs[0].name} is not float32")
    if not any(out.type.tensor_type.elem_type in FLOAT_TYPES for out in model.graph.output):
        raise InvalidModelError(f"model {name}: has no float32 output to score")
    shape = tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim)
    return SourceModel(data=data, source=name, input_name=inputs[0].name, input_shape=shape)


Preprocess = Callable[[NDArray[np.float32]], NDArray[np.float32]]


def load_dataset(data: str | Path | bytes | None, model: SourceModel, store_root: Path | None = None,
                 preprocess: Preprocess | None = None) -> Dataset:
    """Read DATA.npz (or synthesise inputs when there is none) and split it, checked against `model`.

    `preprocess` (a pre module, batch in and out): DATA.npz holds raw inputs, and what it makes of them
    is checked against the model and calibrates and evaluates the variants."""
    if data is None:
        if preprocess is not None:
            raise InvalidDataError("a pre module needs DATA.npz: raw inputs to run it on (random model inputs "
                                   "would skip it)")
        return _synthetic(model)
    name = "<bytes>" if isinstance(data, bytes) else str(data)
    try:
        raw = data if isinstance(data, bytes) else (
            Path(data).read_bytes() if isinstance(data, Path) else resolve_uri(name, store_root)
        )
        loaded = np.load(io.BytesIO(raw), allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded as npz:
                arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidDataError(f"data {name}: not a readable .npz file ({exc}); expected {DATA_FORMAT}") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # np.load reads a bare .npy array too
        raise InvalidDataError(
            f"data {name}: is a single array ({loaded.dtype} {loaded.shape}, a .npy file); expected {DATA_FORMAT}, "
            "e.g. numpy.savez('data.npz', x=x, y=y)"
        )
    if "x" not in arrays:
        raise InvalidDataError(f"data {name}: has no array `x` (found: {', '.join(sorted(arrays)) or 'none'})")
    x, y = arrays["x"], arrays.get("y")
    if x.dtype != np.float32:
        raise InvalidDataError(f"data {name}: x is {x.dtype}, the model input needs float32")
    raw_x: NDArray[np.float32] | None = None
    if preprocess is not None and len(x):
        raw_x = x
        static = all(dim is not None for dim in model.input_shape[1:])
        x = preprocess(x)
        if static:  # the module returns flat values per sample
            sample = tuple(int(dim) for dim in model.input_shape[1:] if dim is not None)
            if x.shape[1] != int(np.prod(sample)):
                raise InvalidDataError(f"data {name}: the pre module makes {x.shape[1]} values of each sample, "
                                       f"model input {model.input_name} needs {sample}")
            x = x.reshape(len(x), *sample)
    if x.ndim != len(model.input_shape) or x.shape[0] == 0:
        raise InvalidDataError(
            f"data {name}: x has shape {x.shape}, model input {model.input_name} has {len(model.input_shape)} "
            "dimensions (batch first) and at least one sample is needed"
        )
    for axis, (got, want) in enumerate(zip(x.shape[1:], model.input_shape[1:], strict=True), start=1):
        if want is not None and got != want:
            raise InvalidDataError(
                f"data {name}: x dimension {axis} is {got}, model input {model.input_name} needs {want}"
            )
    if y is not None and (y.dtype != np.int64 or y.shape != (x.shape[0],)):
        raise InvalidDataError(f"data {name}: y must be int64 of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
    if y is not None and len(y):
        classes = _output_classes(model)
        low, high = int(y.min()), int(y.max())
        if low < 0 or (classes is not None and high >= classes):
            limit = f"0..{classes - 1}" if classes is not None else "non-negative"
            raise InvalidDataError(
                f"data {name}: labels y range over {low}..{high}, but the model scores classes {limit}"
            )
    dataset = split(x, y)
    if raw_x is None:
        return dataset
    return Dataset(dataset.calibration, dataset.evaluation, dataset.labels, dataset.kind,
                   raw_evaluation=split(raw_x, None).evaluation)


def _output_classes(model: SourceModel) -> int | None:
    """How many classes the first float output scores, when its last dimension is static."""
    for output in onnx.load_model_from_string(model.data).graph.output:
        tensor = output.type.tensor_type
        if tensor.elem_type == onnx.TensorProto.FLOAT and tensor.shape.dim:
            last = tensor.shape.dim[-1]
            return int(last.dim_value) if last.HasField("dim_value") else None
    return None


def split(x: NDArray[np.float32], y: NDArray[np.int64] | None) -> Dataset:
    if len(x) < CALIBRATION_EVERY:
        return Dataset(calibration=x, evaluation=x, labels=y, kind="labelled" if y is not None else "unlabelled")
    index = np.arange(len(x))
    calibrate = index % CALIBRATION_EVERY == 0
    return Dataset(
        calibration=x[calibrate][:CALIBRATION_MAX],
        evaluation=x[~calibrate],
        labels=y[~calibrate] if y is not None else None,
        kind="labelled" if y is not None else "unlabelled",
    )


def _synthetic(model: SourceModel) -> Dataset:
    if any(dim is None for dim in model.input_shape[1:]):
        raise InvalidDataError(
            f"model {model.source}: input {model.input_name} has symbolic dimensions {model.input_shape}; "
            "provide DATA.npz so variants can be calibrated and evaluated"
        )
    shape = (SYNTHETIC_SAMPLES, *(int(dim) for dim in model.input_shape[1:] if dim is not None))
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    dataset = split(x, None)
    return Dataset(dataset.calibration, dataset.evaluation, None, kind="synthetic")
