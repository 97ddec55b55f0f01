"""Loaded variants that run inferences: the small interface every runtime meets, and onnxruntime's.

Shared by the variant factory (scoring) and the device agent (serving, health checks), and kept
free of the build chain (onnx, quantization, TVM) so a device imports only numpy and onnxruntime.
Latency is single-sample inference on one thread (intra- and inter-op threads = 1, sequential
execution), the way a small device runs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

THREADS = 1
LATENCY_WARMUP = 10
LATENCY_RUNS = 200


def open_session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = THREADS
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # warnings about unused initializers are not the user's business
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def scores_output(session: ort.InferenceSession) -> str:
    """The first float output: class scores for a classifier, the tensor compared for any model."""
    for output in session.get_outputs():
        if output.type == "tensor(float)":
            return str(output.name)
    raise ValueError("model has no float output")


@dataclass(frozen=True)
class Runner:
    session: ort.InferenceSession
    input_name: str
    output_name: str
    fixed_batch: bool

    @classmethod
    def load(cls, model: bytes) -> Runner:
        session = open_session(model)
        first = session.get_inputs()[0]
        return cls(session, str(first.name), scores_output(session), isinstance(first.shape[0], int))

    def one(self, sample: NDArray[np.float32]) -> NDArray[np.float32]:
        out: NDArray[np.float32] = self.session.run([self.output_name], {self.input_name: sample[None]})[0]
        first: NDArray[np.float32] = out[0]
        return first

    def many(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        if self.fixed_batch:  # a graph exported with batch 1 runs sample by sample
            return np.stack([self.one(sample) for sample in x])
        out: NDArray[np.float32] = self.session.run([self.output_name], {self.input_name: x})[0]
        return out

    def latency_ms(self, x: NDArray[np.float32]) -> tuple[float, float]:
        feeds = [{self.input_name: x[i % len(x)][None]} for i in range(LATENCY_RUNS + LATENCY_WARMUP)]
        names = [self.output_name]
        timings = []
        for i, feed in enumerate(feeds):
            start = time.perf_counter_ns()
            self.session.run(names, feed)
            if i >= LATENCY_WARMUP:
                timings.append((time.perf_counter_ns() - start) / 1e6)
        p50, p95 = np.percentile(timings, [50, 95])
        return round(float(p50), 4), round(float(p95), 4)


class VariantRunner(Protocol):
    """What evaluation and serving need of a loaded variant: onnxruntime's Runner, or TVM's for compiled ones."""

    @property
    def input_name(self) -> str: ...
    @property
    def output_name(self) -> str: ...

    def one(self, sample: NDArray[np.float32]) -> NDArray[np.float32]: ...
    def many(self, x: NDArray[np.float32]) -> NDArray[np.float32]: ...
    def latency_ms(self, x: NDArray[np.float32]) -> tuple[float, float]: ...
