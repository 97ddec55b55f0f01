"""The ClientApp under secure aggregation: the same local training, its update masked by Flower's SecAgg+.

SecAgg+ runs in Flower's legacy message format (FitIns/FitRes), so the training is a NumPyClient around
`client.train_locally`.  Its mods, outermost first:

- `secaggplus_mod` (Flower) runs the protocol's four stages and masks what the inner mods return;
- `update_mod` turns the trained weights into the update (new minus global weights) and screens it with the guard's
  rule, which the server no longer can: a non-finite or oversized update is withdrawn (the device raises
  UpdateWithdrawnError and drops out of the round; SecAgg+ removes its masks as for any dropout);
- `fixedclipping_mod` (Flower, with privacy on) clips the update to the server's clipping norm first.

Masking the update rather than the weights matters: SecAgg+ clips every masked value to a fixed range before
quantizing it, and an update, unlike a weight, is bounded by the guard's own norm, which sets that range.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client import Client, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import NDArrays, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from tinymlops.errors import UpdateWithdrawnError
from tinymlops.federated.client import train_locally
from tinymlops.federated.guard import screen

MAX_UPDATE_NORM_KEY = "max-update-norm"
MAX_WEIGHT_KEY = "max-weight"
WITHDRAWN = "update withdrawn"  # UpdateWithdrawnError's message: `update withdrawn (<reason>) by node <id>: ...`


class _LocalTrainer(NumPyClient):
    def __init__(self, context: Context) -> None:
        self.context = context

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        arrays, examples, loss = train_locally(self.context, config, [np.asarray(a, np.float32) for a in parameters])
        # SecAgg+ scales each masked update by weight / max weight, so a weight above the cap would overflow its
        # range: a device with more examples than the cap counts as the cap.  Under DP every client weighs 1.
        weight = 1 if "clipping_norm" in config else min(examples, int(config[MAX_WEIGHT_KEY]))
        return list(arrays), weight, {"train-loss": float(loss)}


def _client(context: Context) -> Client:
    client: Client = _LocalTrainer(context).to_client()
    return client


def update_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Reply with the update instead of the new weights, or withdraw it (raise) when the guard's rule refuses it."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    current = parameters_to_ndarrays(fit_ins.parameters)
    reply = call_next(msg, context)
    if reply.has_error():
        return reply
    fit_res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    trained = parameters_to_ndarrays(fit_res.parameters)
    reason = screen(trained, current, float(fit_ins.config[MAX_UPDATE_NORM_KEY]))
    if reason is not None:
        raise UpdateWithdrawnError(f"{WITHDRAWN} ({reason}) by node {context.node_id}: the update is not masked nor "
                                   "sent; the round completes without it")
    # In float64: SecAgg+ scales and quantizes in the arrays' own precision, and float32 would round away all but
    # 24 of the quantization range's bits.
    update = [new.astype(np.float64) - old for new, old in zip(trained, current, strict=True)]
    fit_res.parameters = ndarrays_to_parameters(update)
    reply.content = compat.fitres_to_recorddict(fit_res, keep_input=True)
    return reply


def secure_client_app(privacy: bool) -> ClientApp:
    mods: list[Mod] = [secaggplus_mod, update_mod, *([fixedclipping_mod] if privacy else [])]
    return ClientApp(client_fn=_client, mods=mods)
