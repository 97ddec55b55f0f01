"""Secure aggregation (SecAgg+): the spec's forms, the server's checks on the sum, and one small simulation that
must give plain FedAvg's model from the same updates, within SecAgg+'s quantization.

The simulation is deterministic where it matters: each simulated device trains its own shard with a seed of its
partition and the round, single-threaded, so both runs average the same updates; only SecAgg+'s stochastic
rounding differs, and the tolerance is its bound (one quantization step per client, scaled back by the weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import Code, FitIns, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity

from tinymlops.errors import SpecError, UpdateWithdrawnError
from tinymlops.federated.run import train_federated
from tinymlops.federated.secagg import (
    MODULUS,
    SecureAggregateStrategy,
    check_aggregate,
    mean_train_loss,
    quantization_range,
    withdrawals,
)
from tinymlops.federated.secagg_client import MAX_UPDATE_NORM_KEY, update_mod
from tinymlops.federated.secagg_server import MAX_WEIGHT, check_round_size
from tinymlops.federated.spec import SecureAggregation, parse_spec
from tinymlops.federated.torchmodel import load_model
from tinymlops.model.digits import DigitsArtifacts

REFS = {"model": {"name": "digits"}, "fleet": {"name": "sim"}}


# --- spec ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (False, None),
    ({"enabled": False, "shares": 3}, None),
    (True, SecureAggregation()),
    ({}, SecureAggregation()),
    ({"shares": 0.4, "reconstructionThreshold": 0.75}, SecureAggregation(0.4, 0.75)),
    ({"shares": 5, "reconstructionThreshold": 3, "timeoutSeconds": 30}, SecureAggregation(5, 3, 30.0)),
    ({"shares": 1, "reconstructionThreshold": 1}, SecureAggregation(1.0, 1.0)),  # 1 is "all", as in Flower
])
def test_secure_aggregation_takes_the_boolean_and_the_object_form(value: object,
                                                                   expected: SecureAggregation | None) -> None:
    assert parse_spec({**REFS, "secureAggregation": value}).secure_aggregation == expected


@pytest.mark.parametrize(("value", "strategy", "message"), [
    ("yes", "FedAvg", r"spec\.secureAggregation: expected true, false or an object"),
    ({"shares": 2}, "FedAvg", r"spec\.secureAggregation\.shares: above 1 it is a count, an integer of at least 3"),
    ({"shares": 4.5}, "FedAvg", r"spec\.secureAggregation\.shares"),
    ({"shares": 0}, "FedAvg", r"spec\.secureAggregation\.shares: expected a fraction"),
    ({"reconstructionThreshold": 0.5}, "FedAvg", r"reconstructionThreshold: must be more than half"),
    ({"shares": 6, "reconstructionThreshold": 3}, "FedAvg", r"more than half of the 6 shares"),
    ({"shares": 6, "reconstructionThreshold": 6}, "FedAvg", r"fewer than all of them"),
    ({"shares": 0.5, "reconstructionThreshold": 3}, "FedAvg", r"a count needs spec\.secureAggregation\.shares"),
    ({"enabled": "yes"}, "FedAvg", r"spec\.secureAggregation\.enabled"),
    ({"threshold": 0.7}, "FedAvg", r"spec\.secureAggregation\.threshold: no such field"),
    ({"timeoutSeconds": 0}, "FedAvg", r"spec\.secureAggregation\.timeoutSeconds"),
    (True, "FedMedian", r"FedMedian takes the coordinate-wise median .* only their sum"),
    (True, "Krum", r"Krum compares the individual updates"),
    (True, "FedTrimmedAvg", r"FedTrimmedAvg drops"),
])
def test_a_bad_secure_aggregation_is_named(value: object, strategy: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec({**REFS, "strategy": {"name": strategy}, "secureAggregation": value})


def test_robust_strategies_still_run_without_secure_aggregation() -> None:
    assert parse_spec({**REFS, "strategy": {"name": "Krum"}, "secureAggregation": False}).strategy == "Krum"


def test_a_round_too_small_for_the_shares_is_refused_before_it_starts() -> None:
    check_round_size(SecureAggregation(3, 2), 3)
    with pytest.raises(SpecError, match=r"spec\.secureAggregation\.shares: 5 shares need .* samples 4"):
        check_round_size(SecureAggregation(5, 3), 4)
    with pytest.raises(SpecError, match=r"at least 2 clients per round"):
        check_round_size(SecureAggregation(), 1)


# --- what the server checks ------------------------------------------------------------------

@pytest.mark.parametrize("clients", [1, 2, 4, 7, 100, 1000, 5000])
def test_the_quantization_range_never_lets_the_masked_sum_wrap(clients: int) -> None:
    q = quantization_range(clients)
    assert q & (q - 1) == 0 and q < 2**31  # a power of two within Flower's int32 quantization
    assert clients * q < MODULUS <= 2 * clients * q or q == 2**30  # the finest such range


def test_the_average_update_is_checked_for_what_an_average_of_honest_updates_cannot_be() -> None:
    small = [np.full((3, 4), 0.1, np.float32), np.zeros(2, np.float32)]
    assert check_aggregate(small, max_update_norm=1.0) is None
    assert check_aggregate([a * 100 for a in small], max_update_norm=1.0) == "oversized"
    assert check_aggregate([small[0], np.array([np.inf, 0], np.float32)], max_update_norm=1.0) == "non-finite"


def test_a_withdrawal_is_counted_once_per_device_by_the_reason_it_gave() -> None:
    def error(reason: str, node: int) -> Exception:
        return Exception(f"<class 'ClientAppException'>:<'Exception ClientAppException occurred. Message: update "
                         f"withdrawn ({reason}) by node {node}: the update is not masked nor sent'>")

    failures = [error("non-finite", 7), error("oversized", 9), error("non-finite", 11), Exception("timed out")]
    assert withdrawals(failures + failures) == {"non-finite": 2, "oversized": 1}
    assert withdrawals([Exception("timed out")]) == {}


# --- one small simulation ------------------------------------------------------------------

def test_secure_aggregation_gives_fedavgs_model_from_the_same_updates(digits: DigitsArtifacts,
                                                                      tmp_path: Path) -> None:
    with np.load(digits.data_path) as data:
        x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
    corrupt = x[240:300].copy()
    corrupt[0, 0] = np.nan  # a broken sensor: its update is non-finite and must not reach the sum
    shards = [(x[:80], y[:80]), (x[80:160], y[80:160]), (x[160:240], y[160:240]), (corrupt, y[240:300])]
    common = {**REFS, "rounds": 1, "clients": {"fraction": 1.0, "min": 4}, "localEpochs": 1, "learningRate": 0.05}
    model = digits.model_path.read_bytes()
    plain = train_federated(model, shards, parse_spec(common), x_eval=x[300:], y_eval=y[300:],
                            workdir=tmp_path / "plain", cpus=1)
    secure_spec = parse_spec({**common, "secureAggregation": {"shares": 1.0, "reconstructionThreshold": 0.75}})
    secure = train_federated(model, shards, secure_spec, x_eval=x[300:], y_eval=y[300:],
                             workdir=tmp_path / "secure", cpus=1)

    # the same history shape: the corrupt device dropped and counted, the other three averaged
    assert [(r.round, r.clients, r.dropped) for r in secure.rounds] == [(1, 3, {"non-finite": 1})]
    assert [(r.round, r.clients, r.dropped) for r in plain.rounds] == [(1, 3, {"non-finite": 1})]
    assert secure.rounds[0].train_loss is not None and np.isfinite(secure.rounds[0].loss)

    # the same weights, up to one quantization step per client in the weighted sum, divided by the total weight
    good = [len(s[1]) for s in shards[:3]]
    step = 2 * secure_spec.max_update_norm / quantization_range(len(shards))
    tolerance = len(good) * step / (sum(good) / MAX_WEIGHT) + 1e-5
    secure_arrays = load_model(secure.model, what="secure").get_arrays()
    plain_arrays = load_model(plain.model, what="plain").get_arrays()
    base_arrays = load_model(model, what="base").get_arrays()
    moved = max(float(np.abs(p - b).max()) for p, b in zip(plain_arrays, base_arrays, strict=True))
    assert moved > 100 * tolerance  # the round changed the model far more than the tolerance
    for s_array, p_array in zip(secure_arrays, plain_arrays, strict=True):
        np.testing.assert_allclose(s_array, p_array, rtol=0, atol=tolerance)
    assert secure.rounds[0].accuracy == pytest.approx(plain.rounds[0].accuracy, abs=2 / len(y[300:]))


def test_the_training_loss_is_weighted_as_the_plain_path_weighs_it() -> None:
    assert mean_train_loss([(1, {"train-loss": 1.0}), (3, {"train-loss": 2.0})]) == {"train-loss": 1.75}
    assert mean_train_loss([]) == {}


# --- the device's own guard (update_mod) ----------------------------------------------------

def _train_message(weights: list[np.ndarray], max_norm: float) -> Message:
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters(weights), {MAX_UPDATE_NORM_KEY: max_norm}),
                                          keep_input=True)
    return Message(content, dst_node_id=7, message_type=MessageType.TRAIN)


def _trained_to(weights: list[np.ndarray]) -> Any:
    def call_next(msg: Message, _: Context) -> Message:
        fit_res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), 10, {"train-loss": 0.5})
        return Message(compat.fitres_to_recorddict(fit_res, keep_input=True), reply_to=msg)

    return call_next


def test_a_device_sends_its_update_in_float64_and_withdraws_one_the_guard_refuses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower stamps a Message with the run of the ServerApp that made it; here no ServerApp runs.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    current = [np.full((2, 2), 0.5, np.float32), np.zeros(3, np.float32)]
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    trained = [np.full((2, 2), 0.75, np.float32), np.array([0.1, 0.0, 0.0], np.float32)]
    reply = update_mod(_train_message(current, 1.0), context, _trained_to(trained))
    fit_res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    update = parameters_to_ndarrays(fit_res.parameters)
    assert [u.dtype for u in update] == [np.float64, np.float64]
    np.testing.assert_allclose(update[0], 0.25)
    np.testing.assert_allclose(update[1], [0.1, 0, 0], atol=1e-7)
    assert fit_res.num_examples == 10 and fit_res.metrics == {"train-loss": 0.5}
    with pytest.raises(UpdateWithdrawnError, match=r"update withdrawn \(oversized\) by node 7"):
        update_mod(_train_message(current, 0.1), context, _trained_to(trained))
    broken = [trained[0], np.array([np.nan, 0, 0], np.float32)]
    with pytest.raises(UpdateWithdrawnError, match=r"update withdrawn \(non-finite\) by node 7") as refused:
        update_mod(_train_message(current, 1.0), context, _trained_to(broken))
    assert withdrawals([refused.value]) == {"non-finite": 1}  # the server counts what the device said


def test_the_server_applies_a_sane_average_and_drops_a_round_whose_average_is_not() -> None:
    from flwr.server.strategy import FedAvg

    current = [np.ones((2, 2), np.float32)]
    strategy = SecureAggregateStrategy(FedAvg(fit_metrics_aggregation_fn=mean_train_loss), max_update_norm=1.0,
                                       max_clients=3)
    strategy._current = current  # what configure_fit keeps: the global weights the round started from

    def results(update: np.ndarray) -> list[Any]:  # SecAgg+ gives each result the same (average) parameters
        return [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([update]), n, {"train-loss": loss}))
                for n, loss in ((1, 1.0), (3, 2.0))]

    withdrawn = Exception("update withdrawn (oversized) by node 5: ...")
    weights, _ = strategy.aggregate_fit(1, results(np.full((2, 2), 0.1)), [withdrawn, withdrawn])
    assert weights is not None
    np.testing.assert_allclose(parameters_to_ndarrays(weights)[0], 1.1, rtol=1e-6)
    assert (strategy.replied[1], dict(strategy.dropped[1])) == (2, {"oversized": 1})
    assert dict(strategy.train_metrics[1]) == {"train-loss": 1.75}
    refused, _ = strategy.aggregate_fit(2, results(np.full((2, 2), 0.6)), [])  # norm 1.2 > 1.0
    assert refused is None and (strategy.replied[2], dict(strategy.dropped[2])) == (0, {"oversized-aggregate": 2})
