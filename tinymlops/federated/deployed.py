"""A training on real devices: the ServerApp and ClientApp as a Flower App bundle (FAB), run by a SuperLink.

In Flower's deployment runtime the ServerApp does not run in the caller's process: the SuperLink's SuperExec
starts `flwr-serverapp` from the bundle a run was submitted with, and each SuperNode's SuperExec starts
`flwr-clientapp` from the same bundle.  The bundle here is only a pyproject.toml whose components name this
module's apps (they import tinymlops, installed beside Flower on the server and on every device); no code is
shipped in it.  The run's inputs (spec, model, held-out data) and its result travel through the run's directory,
named in the run config, since Flower 1.42 hands nothing of a ServerApp's result back to the submitter.  The
model itself reaches the devices inside the training messages (`model-onnx`); their data never leaves them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from numpy.typing import NDArray

from tinymlops import errors
from tinymlops.federated.client import client_app
from tinymlops.federated.privacy import epsilon
from tinymlops.federated.run import Outcome, RoundRecord, round_history
from tinymlops.federated.server import Run, run_rounds
from tinymlops.federated.spec import Privacy, Promotion, TrainingSpec
from tinymlops.federated.superlink import LocalSuperLink
from tinymlops.federated.torchmodel import load_model
from tinymlops.store import atomic_write

ROUND_BUDGET_S = 600.0  # how long one round may take on slow devices before the run is given up

client = client_app(privacy=False)
client_private = client_app(privacy=True)  # clips each update on the device before it leaves (DP)


def application_bundle(privacy: bool) -> bytes:
    """The FAB a run is submitted with: which ServerApp and ClientApp to start, and the run config's keys."""
    from flwr.cli.build import build_fab_from_files

    clientapp = "client_private" if privacy else "client"
    pyproject = f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tinymlops-federated"
version = "1.0.0"
description = "A FederatedTraining of TinyMLOps: the ONNX model trained on the devices' own data"
dependencies = []

[tool.flwr.app]
publisher = "tinymlops"

[tool.flwr.app.components]
serverapp = "tinymlops.federated.deployed:server"
clientapp = "tinymlops.federated.deployed:{clientapp}"

[tool.flwr.app.config]
run-dir = ""
"""
    fab, _ = build_fab_from_files({"pyproject.toml": pyproject.encode()})
    return bytes(fab)


def write_inputs(run_dir: Path, model: bytes, spec: TrainingSpec, x_eval: NDArray[np.float32],
                 y_eval: NDArray[np.int64]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "model.onnx", model)
    atomic_write(run_dir / "spec.json", json.dumps(dataclasses.asdict(spec)).encode())
    with (run_dir / "eval.npz").open("wb") as out:
        np.savez(out, x=x_eval, y=y_eval)


def read_spec(document: dict[str, Any]) -> TrainingSpec:
    privacy = Privacy(**document["privacy"]) if document.get("privacy") else None
    return TrainingSpec(**{**document, "privacy": privacy, "promotion": Promotion(**document["promotion"])})


server = ServerApp()


@server.main()
def _main(grid: Grid, context: Context) -> None:
    run_dir = Path(str(context.run_config["run-dir"]))
    try:
        model = (run_dir / "model.onnx").read_bytes()
        with np.load(run_dir / "eval.npz") as held_out:
            x, y = held_out["x"].astype(np.float32), held_out["y"].astype(np.int64)
        spec = read_spec(json.loads((run_dir / "spec.json").read_bytes()))
        run = Run(spec, load_model(model, what="model.onnx"), "", hashlib.sha256(model).hexdigest(), "", x, y,
                  model_bytes=model)
        run_rounds(run, grid)
        assert run.result is not None
        with (run_dir / "final.npz").open("wb") as out:
            np.savez(out, *run.result.arrays.to_numpy_ndarrays())
        atomic_write(run_dir / "result.json", json.dumps(
            {"available": run.available, "rounds": [r.as_dict() for r in round_history(run)]}).encode())
    except Exception as exc:  # the submitter learns why from the run's directory, under the error's own class
        atomic_write(run_dir / "error.json", json.dumps({"type": type(exc).__name__, "message": str(exc)}).encode())
        raise


def _raise_recorded(run_dir: Path, what: str, details: str) -> None:
    try:
        recorded = json.loads((run_dir / "error.json").read_bytes())
    except (OSError, ValueError):
        raise errors.FederatedError(f"{what}: the run on the SuperLink failed: {details or 'no details'}") from None
    kind = getattr(errors, str(recorded.get("type")), None)
    if not (isinstance(kind, type) and issubclass(kind, errors.TinyMLOpsError)):
        kind = errors.FederatedError
    raise kind(f"{what}: {recorded.get('message')}")


def train_on_superlink(superlink: LocalSuperLink, model: bytes, spec: TrainingSpec, *, x_eval: NDArray[np.float32],
                       y_eval: NDArray[np.int64], run_dir: Path, what: str = "model") -> Outcome:
    """Run `spec` on the SuperNodes connected to `superlink`, start to exported model (as `train_federated`)."""
    server_model = load_model(model, what=what)  # names what cannot be trained before the run is submitted
    _, predicted = server_model.evaluate(x_eval, y_eval)
    base_accuracy = float(np.mean(predicted == y_eval))
    write_inputs(run_dir, model, spec, x_eval, y_eval)
    run_id = superlink.start_run(application_bundle(spec.privacy is not None), {"run-dir": str(run_dir.resolve())})
    status = superlink.wait(run_id, spec.wait_for_clients_s + ROUND_BUDGET_S * spec.rounds)
    if status.sub_status != "completed" or not (run_dir / "result.json").is_file():
        _raise_recorded(run_dir, what, status.details)
    result = json.loads((run_dir / "result.json").read_bytes())
    with np.load(run_dir / "final.npz") as final_npz:
        final = [final_npz[f"arr_{i}"] for i in range(len(final_npz.files))]
    if not all(np.isfinite(a).all() for a in final):
        raise errors.FederatedError(f"{what}: the aggregate has non-finite weights; nothing is exported")
    rounds = [RoundRecord(r["round"], r["clients"], r["dropped"], r["trainLoss"], r["loss"], r["accuracy"])
              for r in result["rounds"]]
    privacy = spec.privacy
    spent = epsilon(privacy.noise_multiplier, spec.rounds, privacy.delta) if privacy else None
    return Outcome(server_model.export(final), base_accuracy, rounds,
                   None if spent is None or math.isinf(spent) else spent, privacy.delta if privacy else None,
                   int(result["available"]))
