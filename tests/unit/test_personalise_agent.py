"""On-device personalisation through the agent: kept in the state directory, served, reported as a flag,
made stale by a new variant or revision, refused where the model has no last layer or the policy says no."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from numpy.typing import NDArray
from onnx import TensorProto, helper

from tests.unit.signed_build import BIG, KEY, PUB, SMALL, Built
from tinymlops.agent import DeviceAgent, SessionCache
from tinymlops.agent.device import ActiveModel
from tinymlops.agent.install import install_from_dir
from tinymlops.agent.personalise import HEAD, RECORD, personalise_agent, personalise_device
from tinymlops.agent.standalone import infer, open_agent, save_policy
from tinymlops.cli import main
from tinymlops.devices import DeviceCapabilities
from tinymlops.errors import InvalidDataError, InvalidReportError, NoLastLayerError, PersonalisationError
from tinymlops.model import DigitsArtifacts
from tinymlops.publish import write_variant_dir
from tinymlops.report import Report
from tinymlops.runners import Runner
from tinymlops.store import sha256_bytes

PERMUTATION = np.roll(np.arange(10), 1)  # the device names every digit differently: a derangement


@pytest.fixture(scope="module")
def built(signed_build: Built) -> Built:
    return signed_build


@pytest.fixture(scope="module")
def samples(digits: DigitsArtifacts) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    data = np.load(digits.data_path)
    return data["x"][:400], data["y"][:400]


def installed(tmp_path: Path, built: Any, caps: DeviceCapabilities = BIG, version: int = 2) -> Path:
    menu, blobs = built
    menu = {**json.loads(json.dumps(menu)), "version": version}
    source = tmp_path / f"v{version}"
    write_variant_dir(source, menu, blobs, KEY)
    state = tmp_path / "state"
    install_from_dir(source, state, pubkey_pem=PUB, caps=caps)
    return state


def test_a_permuted_device_keeps_its_head_serves_with_it_and_reports_only_a_flag(
        tmp_path: Path, built: Any, samples: Any) -> None:
    x, y = samples
    state = installed(tmp_path, built)
    agent = open_agent(state)
    assert agent.active is not None and agent.personalised() is None  # nothing asked for, nothing said
    knows = float(np.mean(np.argmax(agent.active.runner.many(x), 1) == y))  # the base on the true digits
    fit = personalise_device(state, agent, x, PERMUTATION[y], source="mine.npz")
    outcome = fit.outcome
    assert outcome.used and outcome.base_accuracy <= 1 - knows + 0.05 and outcome.personal_accuracy >= knows - 0.1
    assert fit.head_bytes == (128 * 10 + 10) * 4
    record = json.loads((state / RECORD).read_bytes())
    assert record["used"] and record["variant_sha256"] == agent.active.sha256 and (state / HEAD).is_file()
    assert "x" not in record and "y" not in record  # the data is not kept

    served = infer(state, x[:100])  # a new process: the head comes back from the state directory
    assert served.personalised
    agree = float(np.mean(np.argmax(served.scores, 1) == PERMUTATION[y[:100]]))
    assert agree >= knows - 0.1
    report = open_agent(state).report(namespace="ns", fleet="f")
    assert report.personalised is True
    wire = report.to_json()
    assert wire["personalised"] is True and not {"weight", "bias", "head"} & set(wire)
    assert Report.from_json(wire).personalised is True


def test_a_head_that_does_not_help_is_not_used_and_the_device_says_so(
        tmp_path: Path, built: Any, samples: Any) -> None:
    x, _ = samples
    state = installed(tmp_path, built)
    agent = open_agent(state)
    assert agent.active is not None
    own = np.argmax(agent.active.runner.many(x), 1)  # labels the base already gets all right
    fit = personalise_device(state, agent, x, own, source="mine.npz")
    assert not fit.outcome.used and fit.outcome.base_accuracy == 1.0
    assert not (state / HEAD).exists() and agent.personal is None
    again = open_agent(state)
    assert again.report(namespace="ns", fleet="f").personalised is False  # tried, the base serves
    assert not infer(state, x[:5]).personalised


def test_a_new_variant_makes_the_head_stale_and_leaves_it_on_disk(tmp_path: Path, built: Any, samples: Any) -> None:
    x, y = samples
    state = installed(tmp_path, built, BIG, version=2)
    personalise_device(state, open_agent(state), x, PERMUTATION[y], source="mine.npz")
    head = (state / HEAD).read_bytes()
    installed(tmp_path, built, SMALL, version=3)  # the 128 KB device runs int8 from the next menu
    agent = open_agent(state)
    assert agent.active is not None and agent.active.variant_id == "int8-static"
    assert agent.serving_personal() is None and agent.personalised() is False
    assert (state / HEAD).read_bytes() == head  # nothing the device had is deleted
    result = CliRunner().invoke(main, ["agent", "status", "--state-dir", str(state), "--output", "json"])
    assert result.exit_code == 0, result.output
    personal = json.loads(result.output)["personalisation"]
    assert personal["serving"] is False and "stale, not used" in personal["why"]


def test_a_new_revision_of_the_same_bytes_makes_the_head_stale(tmp_path: Path, built: Any, samples: Any) -> None:
    x, y = samples
    state = installed(tmp_path, built)
    agent = open_agent(state)
    personalise_device(state, agent, x, PERMUTATION[y], source="mine.npz")
    assert agent.active is not None and agent.serving_personal() is not None
    agent.active = replace(agent.active, revision=agent.active.revision + 1)
    assert agent.serving_personal() is None and agent.personalised() is False
    out = agent.infer(x[0])
    assert out is not None and np.allclose(out, agent.active.runner.one(x[0]))  # the base serves


def test_a_tampered_head_is_not_served(tmp_path: Path, built: Any, samples: Any) -> None:
    x, y = samples
    state = installed(tmp_path, built)
    personalise_device(state, open_agent(state), x, PERMUTATION[y], source="mine.npz")
    (state / HEAD).write_bytes((state / HEAD).read_bytes()[:-8] + b"\0" * 8)
    agent = open_agent(state)
    assert agent.serving_personal() is None
    result = CliRunner().invoke(main, ["agent", "status", "--state-dir", str(state)])
    assert "personalised: no" in result.output and "does not match the sha256" in result.output


def test_a_fleet_that_turns_it_off_refuses_and_serves_the_base(tmp_path: Path, built: Any, samples: Any) -> None:
    x, y = samples
    state = installed(tmp_path, built)
    personalise_device(state, open_agent(state), x, PERMUTATION[y], source="mine.npz")
    save_policy(state, {"personalisation": {"enabled": False}})
    agent = open_agent(state)
    assert agent.serving_personal() is None and agent.personalised() is None  # off for this fleet: no flag
    with pytest.raises(PersonalisationError, match=r"personalisation\.enabled: false"):
        personalise_device(state, agent, x, PERMUTATION[y], source="mine.npz")


def test_bad_data_is_named_and_nothing_is_written(tmp_path: Path, built: Any, samples: Any) -> None:
    x, y = samples
    state = installed(tmp_path, built)
    with pytest.raises(InvalidDataError, match=r"y\[\d+\] = 1\d is not a class of this model \(0\.\.9\)"):
        personalise_device(state, open_agent(state), x, y + 5, source="mine.npz")
    with pytest.raises(InvalidDataError, match=r"shape \(400, 32\); the model takes \[batch, 64\]"):
        personalise_device(state, open_agent(state), x[:, :32].copy(), y, source="mine.npz")
    assert not (state / RECORD).exists()


def test_a_model_without_a_last_layer_is_refused_and_keeps_serving() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["h"]), helper.make_node("Sigmoid", ["h"], ["probabilities"])], "odd",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    sample = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    runner = Runner.load(model)
    variant = {"id": "odd", "sha256": sha256_bytes(model), "format": "onnx", "metrics": {},
               "health_check": {"inputs": [sample.tolist()], "outputs": [runner.one(sample).tolist()], "atol": 1e-5}}
    agent = DeviceAgent(BIG, KEY.public_key(), SessionCache(), active=ActiveModel(variant, 1, runner, "test", 0.0))
    with pytest.raises(NoLastLayerError, match="last layer is a Sigmoid"):
        personalise_agent(agent, model, np.zeros((50, 4), np.float32), np.zeros(50, np.int64))
    assert agent.personal is None and agent.infer(sample) is not None


def test_the_cli_prints_before_and_after_and_names_bad_input(
        tmp_path: Path, built: Any, samples: Any) -> None:
    x, y = samples
    state = installed(tmp_path, built)
    data = tmp_path / "mine.npz"
    np.savez(data, x=x, y=PERMUTATION[y])
    result = CliRunner().invoke(main, ["agent", "personalise", "--state-dir", str(state), "--data", str(data),
                                       "--output", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["used"] and document["personal_accuracy"] > document["base_accuracy"]
    text = CliRunner().invoke(main, ["agent", "personalise", "--state-dir", str(state), "--data", str(data)])
    assert "local validation accuracy: base" in text.output and "used:" in text.output
    unlabelled = tmp_path / "x.npz"
    np.savez(unlabelled, x=x)
    refused = CliRunner().invoke(main, ["agent", "personalise", "--state-dir", str(state), "--data", str(unlabelled)])
    assert refused.exit_code == 1 and "has no array `y`" in refused.output and "base keeps serving" in refused.output


def test_the_report_flag_is_checked() -> None:
    raw = {"device": "d", "namespace": "n", "fleet": "f", "device_class": "c", "arch": "a", "phase": "Running",
           "menu_version": 1, "sent_at": 1.0}
    assert "personalised" not in Report.from_json(raw).to_json()
    assert Report.from_json({**raw, "personalised": False}).to_json()["personalised"] is False
    with pytest.raises(InvalidReportError, match=r"report\.personalised: 'yes' is not true or false"):
        Report.from_json({**raw, "personalised": "yes"})


def test_the_fleet_policy_reaches_the_agent_through_the_plan(built: Any) -> None:
    menu, _ = built
    agent = DeviceAgent(BIG, KEY.public_key(), SessionCache())
    agent.choose(menu, {"objective": "accuracy", "personalisation": {"enabled": True, "minImprovement": 0.05}})
    assert agent.personalisation.enabled is True and agent.personalisation.min_improvement == 0.05
    assert agent.personalised() is False  # enabled, nothing fitted: the base serves, and the report says so
    agent.choose(menu, {"personalisation": {"minImprovement": "lots"}})  # signed but unreadable: the base alone
    assert agent.personalisation.enabled is False and agent.personalised() is None


def test_a_corrupt_record_leaves_the_base_serving_and_status_names_it(
        tmp_path: Path, built: Any, samples: Any) -> None:
    x, _ = samples
    state = installed(tmp_path, built)
    (state / RECORD).write_text("{not json")
    assert not infer(state, x[:3]).personalised  # the device serves on
    result = CliRunner().invoke(main, ["agent", "status", "--state-dir", str(state), "--output", "json"])
    assert result.exit_code == 0, result.output
    assert "not JSON" in json.loads(result.output)["personalisation"]["why"]
