"""Federated training with Flower: the fleet trains the ONNX model on its own data, which never leaves a device.

`spec` reads a FederatedTraining's spec; `torchmodel` trains an ONNX graph in torch (onnx2torch) and writes the
weights back into the same graph; `server` and `client` are Flower's ServerApp and ClientApp; `guard` drops
non-finite and oversized updates; `privacy` reports the ε of the DP rounds; `run` drives a simulated fleet with
Flower's simulation engine; `shards` deals non-IID data to simulated devices; `promotion` decides whether the
trained model ships; `secagg_server`, `secagg_client` and `secagg` are the same training under secure aggregation
(Flower's SecAgg+, in its legacy workflow API), where the server sees only the sum of the updates.  torch,
onnx2torch and flwr come with the `federated` extra: `spec`, `shards`, `privacy` and `promotion` need none of them
(the operator reads specs without them); callers of the others check the extra first
(`require_extra("federated", ...)`), so a missing one is named, not a bare ImportError.

Real devices: `participation` says when a device may train (its fleet's policy over its context), `nodekey` binds
a device's Flower node key to its identity key, `supernode` runs `flower-supernode` under the policy, `superlink`
and `tls` run a SuperLink with TLS and node authentication for one training, and `deployed` is the app bundle
that SuperLink runs (needs flwr); the first two need none of the heavy extras.
"""
