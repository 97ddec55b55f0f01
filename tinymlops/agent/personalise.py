"""A device fits its own last layer (`tinymlops.personalise`) and keeps it beside its verified model.

`personalise_agent` works on any `DeviceAgent` in memory (a resident agent, a simulated device): it reads the
active variant's last layer from the model's bytes, runs the signed model with that layer's input exposed (after
the menu's health check passes on that graph too, so exposing a tensor changed nothing the model computes), fits
and judges a head on the device's labelled samples, and sets `agent.personal` only when the head wins.

A standalone device keeps the result in its state directory (`slots.py` lists the files):

    personal.json      the last fit: the variant digest and revision it applies to, before/after local
                       validation accuracy, used or not and why, the head's sha256 and size (never the data)
    personal-head.npz  the head's weights and bias (float32), written only when it is used; never uploaded

`attach` puts a kept head back on the agent each time a command opens it, only while it was fitted on the
active variant in the active revision: a new variant or revision leaves the file where it is and the base
serves, and `agent status` says why.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.agent.device import DeviceAgent
from tinymlops.agent.health import health_check
from tinymlops.agent.slots import DEVICE_KEY, read_active
from tinymlops.envelope import load_device_key
from tinymlops.errors import IntegrityError, NoLastLayerError, PersonalisationError, TinyMLOpsError
from tinymlops.personalise import (
    Head,
    Outcome,
    PersonalisationPolicy,
    Personalised,
    check_data,
    check_reproduces,
    find_last_layer,
    personalise,
)
from tinymlops.protect import open_artifact
from tinymlops.store import atomic_write, digest_matches, read_json_file, sha256_bytes

RECORD, HEAD = "personal.json", "personal-head.npz"


@dataclass(frozen=True)
class Fit:
    outcome: Outcome
    fit_ms: float  # the fit and its validation, on this device
    head_bytes: int  # the head's weights and bias


def personalise_agent(agent: DeviceAgent, model: bytes, x: NDArray[Any], y: NDArray[Any] | None, *,
                      policy: PersonalisationPolicy | None = None, source: str = "data") -> Fit:
    """Fit the active variant's last layer on (x, y) and let it serve when local validation says so.

    `model` is the active variant's plaintext bytes.  PersonalisationError (NoLastLayerError) or InvalidDataError
    name why nothing was fitted; the base keeps serving either way."""
    policy = policy or agent.personalisation
    if policy.enabled is False:
        raise PersonalisationError("the fleet's policy turns personalisation off (policy.personalisation.enabled: "
                                   "false); the base keeps serving")
    base = load_base(agent, model)
    x, labels = check_data(x, y, base.base.session.get_inputs()[0].shape, base.head.classes, source=source)
    modules = agent.active.modules if agent.active is not None else None
    if modules is not None:  # the device's samples are raw inputs: the variant's pre module makes them model inputs
        x = np.stack([modules.pre(np.ascontiguousarray(sample)) for sample in x])
    scores, features = base.run(x)
    assert agent.active is not None  # load_base checked
    check_reproduces(base.head, features, scores, atol=float(agent.active.variant["health_check"]["atol"]))
    start = time.perf_counter()
    outcome = personalise(features, scores, labels, base.head, policy)
    fit_ms = (time.perf_counter() - start) * 1000
    agent.personal = replace(base, head=outcome.head) if outcome.used else None
    return Fit(outcome, fit_ms, outcome.head.nbytes)


def load_base(agent: DeviceAgent, model: bytes) -> Personalised:
    """The active variant with its last layer's input exposed and the base's own layer as head, health-checked."""
    active = agent.active
    if active is None:
        raise PersonalisationError("no variant installed: nothing to personalise")
    if active.variant.get("format", "onnx") != "onnx":
        raise NoLastLayerError(f"variant {active.variant_id} is a {active.variant.get('format')} artifact; "
                               "personalisation reads ONNX variants")
    if not digest_matches(model, active.variant.get("plaintext_sha256") or active.sha256):
        raise IntegrityError(f"variant {active.variant_id}: the bytes given are not the installed model")
    layer = find_last_layer(model, active.runner.output_name)
    base = Personalised.load(model, layer, Head(layer.weight, layer.bias, layer.softmax),
                             variant_sha256=active.sha256, revision=active.revision)
    health_check(base.base, active.variant)
    return base


# --- a standalone device's state directory ----------------------------------------------------------------


def installed_model(state_dir: Path) -> bytes:
    """The active slot's model, verified against its digest and decrypted in memory when it is encrypted."""
    slot = read_active(state_dir)
    if slot is None:
        raise PersonalisationError(f"{state_dir}: no variant installed; run `tinymlops agent install` first")
    if not slot.variant.get("encryption"):
        return slot.model
    key_file = state_dir / DEVICE_KEY
    device_key = load_device_key(key_file.read_bytes(), source=str(key_file)) if key_file.is_file() else None
    return open_artifact(slot.model, slot.variant, device_key=device_key, wrapped=slot.wrapped, context=slot.context)


def personalise_device(state_dir: Path, agent: DeviceAgent, x: NDArray[Any], y: NDArray[Any] | None, *,
                       source: str) -> Fit:
    """Fit on this device's samples, record the outcome in the state directory, and keep the head if used."""
    result = personalise_agent(agent, installed_model(state_dir), x, y, source=source)
    assert agent.active is not None
    outcome = result.outcome
    record = {"variant": agent.active.variant_id, "variant_sha256": agent.active.sha256,
              "revision": agent.active.revision, "menu_version": agent.active.menu_version, "used": outcome.used,
              "reason": outcome.reason, "base_accuracy": outcome.base_accuracy,
              "personal_accuracy": outcome.personal_accuracy, "train_samples": outcome.train_samples,
              "validation_samples": outcome.validation_samples, "fit_ms": round(result.fit_ms, 3),
              "head_bytes": result.head_bytes, "fitted_at": time.time(), "head_sha256": None}
    if outcome.used:
        buffer = io.BytesIO()
        np.savez(buffer, weight=outcome.head.weight, bias=outcome.head.bias)
        atomic_write(state_dir / HEAD, buffer.getvalue())
        record["head_sha256"] = sha256_bytes(buffer.getvalue())
    atomic_write(state_dir / RECORD, json.dumps(record, indent=2).encode())
    return result


def read_record(state_dir: Path) -> dict[str, Any] | None:
    """The last fit's record; None when this device never personalised."""
    record = read_json_file(state_dir / RECORD)
    if record is None:
        return None
    if not isinstance(record, dict):
        raise IntegrityError(f"{state_dir / RECORD}: not a JSON object")
    return record


def attach(state_dir: Path, agent: DeviceAgent) -> str | None:
    """Put the kept head back on the agent when it applies; otherwise the reason it does not (None: no record).

    Never raises: whatever is wrong with the kept files, the base serves and the reason says why."""
    try:
        record = read_record(state_dir)
    except IntegrityError as exc:
        return f"{exc}; the base serves"
    active = agent.active
    if record is None or active is None:
        return None
    if agent.personalisation.enabled is None:  # the owner personalised a device no fleet policy speaks for
        agent.personalisation = replace(agent.personalisation, enabled=True)
    if not record.get("used"):
        return str(record.get("reason"))  # says it was not used, and why
    if record.get("variant_sha256") != active.sha256 or record.get("revision") != active.revision:
        return (f"the head was fitted on {record.get('variant')} ({str(record.get('variant_sha256'))[:12]}…, revision "
                f"{record.get('revision')}); {active.variant_id} ({active.sha256[:12]}…, revision {active.revision}) "
                "serves now: stale, not used; run `tinymlops agent personalise` again")
    if agent.personalisation.enabled is False:
        return "the device's policy turns personalisation off (personalisation.enabled: false)"
    try:
        head_bytes = (state_dir / HEAD).read_bytes()
        if not digest_matches(head_bytes, str(record.get("head_sha256"))):
            raise IntegrityError(f"{state_dir / HEAD}: does not match the sha256 recorded in {RECORD}")
        with np.load(io.BytesIO(head_bytes), allow_pickle=False) as saved:
            weight, bias = saved["weight"], saved["bias"]
        base = load_base(agent, installed_model(state_dir))
        if weight.shape != base.head.weight.shape or bias.shape != base.head.bias.shape:
            raise IntegrityError(f"{state_dir / HEAD}: weights of shape {weight.shape} for a layer of "
                                 f"{base.head.weight.shape}")
    except (OSError, KeyError, ValueError, TinyMLOpsError) as exc:
        return f"the kept head cannot be used ({exc}); the base serves"
    agent.personal = replace(base, head=Head(weight, bias, base.head.softmax))
    return None


def status(state_dir: Path, agent: DeviceAgent) -> dict[str, Any] | None:
    """The last fit's record, whether its head serves now and why (None: this device never personalised)."""
    try:
        record = read_record(state_dir)
    except IntegrityError as exc:
        return {"serving": False, "why": f"{exc}; the base serves"}
    if record is None:
        return None
    why = attach(state_dir, agent)
    serving = agent.serving_personal() is not None
    return {**record, "serving": serving, "why": record.get("reason") if serving or why is None else why}
