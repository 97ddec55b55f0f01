"""The ClientApp a device runs: train the global model on the device's own shard, send back only the weights.

Which shard: a SuperNode on a device names its data with `--node-config 'data-path="..."'`; a simulated device is
`partition-id` N of the simulation and reads `N.npz` from the directory the server's config names.  The data is
read on the device and never put in a reply: a reply holds the trained arrays and two numbers (examples, loss).
With privacy on, Flower's `fixedclipping_mod` clips the update to the norm the server sends before it leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from tinymlops.errors import FederatedError
from tinymlops.federated.torchmodel import Arrays, FederatedModel, load_model

_MODELS: dict[str, FederatedModel] = {}  # one converted model per process and graph: onnx2torch runs once


def _model(config: Mapping[str, Any]) -> FederatedModel:
    """The graph from the server's path (simulation) or from the message itself (a device beside a SuperLink)."""
    sha256 = str(config["model-sha256"])
    if sha256 not in _MODELS:
        import torch

        torch.set_num_threads(1)  # a simulated device is one worker among many on the host's cores
        what = "the model sent" if "model-onnx" in config else str(config["model-path"])
        data = bytes(config["model-onnx"]) if "model-onnx" in config else Path(what).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise FederatedError(f"{what}: the model is not the one the server trains (sha256 differs)")
        _MODELS[sha256] = load_model(data, what=what)
    return _MODELS[sha256]


def shard_path(context: Context, config: Mapping[str, Any]) -> Path:
    if "data-path" in context.node_config:
        return Path(str(context.node_config["data-path"]))
    return Path(str(config["shards-dir"])) / f"{int(context.node_config['partition-id'])}.npz"


def training_seed(context: Context, server_round: int) -> int:
    """A simulated device is seeded by its partition, so the same shard trains alike in every run (with or without
    secure aggregation); a device on its own SuperNode by its node id."""
    who = int(context.node_config.get("partition-id", context.node_id))
    return server_round * 100_003 + who % 100_003


def train_locally(context: Context, config: Mapping[str, Any], arrays: Arrays) -> tuple[Arrays, int, float]:
    """The global `arrays` trained on this device's own shard: (new arrays, examples, mean last-epoch loss)."""
    model = _model(config)
    with np.load(shard_path(context, config)) as shard:
        x, y = shard["x"].astype(np.float32), shard["y"].astype(np.int64)
    model.set_arrays(arrays)
    # FedProx sends its mu as "proximal-mu" in the Message API and as "proximal_mu" in the legacy one (SecAgg+).
    mu = float(config.get("proximal-mu", config.get("proximal_mu", 0.0)))
    loss = model.train(x, y, epochs=int(config["local-epochs"]), learning_rate=float(config["learning-rate"]),
                       batch_size=int(config["batch-size"]), proximal_mu=mu,
                       seed=training_seed(context, int(config["server-round"])))
    return model.get_arrays(), len(x), loss


def train(msg: Message, context: Context) -> Message:
    config: dict[str, Any] = dict(msg.content.config_records["config"])
    arrays, examples, loss = train_locally(context, config, msg.content.array_records["arrays"].to_numpy_ndarrays())
    # Under DP every client weighs the same (Flower's accounted DP average requires it); otherwise by examples.
    weight = 1 if "clipping_norm" in config else examples
    reply = RecordDict({"arrays": ArrayRecord(arrays),
                        "metrics": MetricRecord({"num-examples": weight, "train-loss": float(loss)})})
    return Message(reply, reply_to=msg)


def client_app(privacy: bool) -> ClientApp:
    app = ClientApp(mods=[fixedclipping_mod] if privacy else [])
    app.train()(train)
    return app
