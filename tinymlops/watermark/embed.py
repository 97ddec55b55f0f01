"""Embed a licensee's watermark: one short fine-tune, the same graph with new weight values.

The loss is the task's cross-entropy on the licensee's data (the given labels, or the base model's own
predictions when there are none: distillation keeps the copy's behaviour), plus the cross-entropy of the
trigger set's labels (black-box mark), plus `strength` times the binary cross-entropy between sigmoid of the
projected layer weights and the code bits (white-box mark, Uchida et al.'s regulariser).  Training runs at
least `epochs` epochs and goes on (up to `max_epochs`) until every code bit reads right with a margin and
every trigger is learnt.  A held-out part of the data measures accuracy before and after.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops import onnxtorch as convert
from tinymlops.errors import InvalidDataError, WatermarkError
from tinymlops.extras import require_extra
from tinymlops.store import sha256_bytes
from tinymlops.watermark import marks
from tinymlops.watermark.copies import Embedded, Parameters, check_data, measure, recorded_copy, split
from tinymlops.watermark.registry import LicenseeRecord, WatermarkRegistry, check_licensee
from tinymlops.watermark.weights import load_onnx, unit_matrix, weight_layers

Progress = Callable[[int, int], None]  # (epochs done, epochs planned)


def _log_probabilities(torch: Any, outputs: Any, probabilities: bool) -> Any:
    # Classifiers exported with their softmax (the digits MLP) give probabilities; others give logits.
    return torch.log(outputs.clamp_min(1e-12)) if probabilities else torch.log_softmax(outputs, dim=1)


def embed(model: bytes, x: NDArray[np.float32], y: NDArray[np.int64] | None, *, key: bytes, licensee: str,
          registry: WatermarkRegistry, seed: int = 0, parameters: Parameters | None = None,
          progress: Progress | None = None) -> Embedded:
    """Watermark `model` for `licensee`, register the record and return the watermarked bytes and metrics.

    Idempotent: when the registry already holds this licensee's copy of this model, made with the same key, seed
    and parameters, that copy is returned (`metrics["reused"]`) rather than trained again."""
    params = parameters or Parameters()
    recorded = recorded_copy(model, x, y, key=key, licensee=check_licensee(licensee), registry=registry, seed=seed,
                         params=params)
    if recorded is not None:
        return recorded
    require_extra("watermark", "watermark embedding", "torch", "onnx2torch")
    import torch

    # Batches of a few hundred small rows: torch's thread pool costs more than it gives (8x slower on 2 busy
    # cores, measured), so the fine-tune runs on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _embed(model, x, y, key=key, licensee=licensee, registry=registry, seed=seed, params=params,
                      progress=progress)
    finally:
        torch.set_num_threads(threads)


def _embed(model: bytes, x: NDArray[np.float32], y: NDArray[np.int64] | None, *, key: bytes, licensee: str,
           registry: WatermarkRegistry, seed: int, params: Parameters, progress: Progress | None) -> Embedded:
    import torch

    started, cpu_started = time.perf_counter(), time.process_time()
    licensee = check_licensee(licensee)
    proto = load_onnx(model, what="model to watermark")
    layers = weight_layers(proto)
    if not layers:
        raise WatermarkError("model to watermark: no weight layer (MatMul, Gemm or Conv with constant weights)")
    if not 0 <= params.layer < len(layers):
        raise WatermarkError(f"layer {params.layer}: the model has {len(layers)} weight layers")
    layer = layers[params.layer]
    check_data(x, y, layers[0].shape[0] if layers[0].op != "Conv" else int(np.prod(x.shape[1:])))

    torch.manual_seed(seed)
    net = convert.trainable(proto)
    weight = net.tensor_for(layer.tensor)
    with torch.no_grad():
        base_out = net.module(torch.from_numpy(x)).reshape(len(x), -1)
    probabilities = bool((base_out >= 0).all() and torch.allclose(base_out.sum(1), torch.ones(len(x)), atol=1e-3))
    labels = y if y is not None else base_out.argmax(1).numpy().astype(np.int64)
    classes = int(base_out.shape[1])
    if y is not None and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise InvalidDataError(f"watermark data: labels y range over {int(y.min())}..{int(y.max())}, the model "
                               f"scores classes 0..{classes - 1}")
    train, held = split(len(x), params.holdout, seed)
    mark = marks.derive_mark(key, licensee, seed, layer_size=layer.matrix.size, triggers=params.triggers,
                             classes=classes, low=float(x.min()), high=float(x.max()), input_shape=x.shape[1:])

    projection = torch.from_numpy(mark.projection)
    code = torch.from_numpy(mark.code.astype(np.float32))
    signed_code = code * 2 - 1
    x_train, y_train = torch.from_numpy(x[train]), torch.from_numpy(labels[train])
    teacher = _log_probabilities(torch, base_out[torch.from_numpy(train)], probabilities)
    x_trig, y_trig = torch.from_numpy(mark.trigger_x), torch.from_numpy(mark.trigger_y)
    optimizer = torch.optim.Adam([b.tensor for b in net.bindings], lr=params.learning_rate)
    generator = torch.Generator().manual_seed(seed)

    def read_out() -> Any:
        flat = unit_matrix(layer.op, weight, trans_b=layer.trans_b).reshape(-1)
        return projection @ flat / flat.norm().clamp_min(1e-12)

    epoch = 0
    while epoch < params.max_epochs:
        for batch in torch.split(torch.randperm(len(x_train), generator=generator), params.batch_size):
            optimizer.zero_grad()
            predicted = _log_probabilities(torch, net.module(x_train[batch]).reshape(len(batch), -1), probabilities)
            task = torch.nn.functional.nll_loss(predicted, y_train[batch]) + params.distillation * (
                torch.nn.functional.kl_div(predicted, teacher[batch], reduction="batchmean", log_target=True))
            trigger = torch.nn.functional.nll_loss(
                _log_probabilities(torch, net.module(x_trig).reshape(len(x_trig), -1), probabilities), y_trig)
            code_loss = torch.nn.functional.binary_cross_entropy_with_logits(params.sharpness * read_out(), code)
            loss = task + trigger + params.strength * code_loss
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        epoch += 1
        if progress is not None:
            progress(epoch, max(params.epochs, epoch))
        if epoch >= params.epochs:
            with torch.no_grad():
                bits_hold = bool(((read_out() * signed_code) >= params.margin).all())
                out = net.module(x_trig).reshape(len(x_trig), -1)
                if bits_hold and bool((out.argmax(1) == y_trig).all()):
                    break

    watermarked = convert.write_back(proto, net.bindings)
    record = LicenseeRecord(
        licensee=licensee, base_sha256=sha256_bytes(model), payload=marks.payload_hex(mark.payload),
        trigger_seed=seed, watermarked_sha256=sha256_bytes(watermarked),
        parameters={**asdict(params), "layer_tensor": layer.tensor, "layer_shape": list(layer.shape),
                    "code": f"BCH({marks.CODE_BITS},{marks.PAYLOAD_BITS})", "code_bits": marks.CODE_BITS,
                    "classes": classes, "input_shape": list(x.shape[1:]), "input_low": float(x.min()),
                    "input_high": float(x.max())})
    registry.keep_base(model)
    registry.keep_copy(watermarked)
    registry.add(record)
    metrics = measure(model, watermarked, mark, params.layer, x[held], labels[held], labelled=y is not None)
    metrics.update(epochs=epoch, seconds=time.perf_counter() - started,
                   cpu_seconds=time.process_time() - cpu_started)
    return Embedded(watermarked, record, metrics)
