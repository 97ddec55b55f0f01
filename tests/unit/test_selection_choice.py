"""Which variant a device chooses: hard filters, fleet weights, battery/charger/network/user rules."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest

from tinymlops.devices import DeviceCapabilities
from tinymlops.errors import NoCompatibleVariantError, SpecError
from tinymlops.selection import Choice, DeviceContext, SelectionPolicy, choose, effective_weights

PC = DeviceCapabilities(name="pc", arch="x86_64", device_class="pc", ram_mb=4096, model_storage_kb=1 << 20)
PHONE = DeviceContext(battery_pct=80.0)


def variant(vid: str, *, precision: str = "fp32", acc: float = 0.975, latency: float | None = 2.0,
            size: int = 400_000, fmt: str = "onnx", arch: str = "any", accepted: bool = True,
            ops: tuple[str, ...] = ("MatMul", "Add", "Relu", "Softmax")) -> dict[str, Any]:
    """A menu entry shaped like the real ones (fields the choice does not read are kept realistic)."""
    runtime = {"onnx": "onnxruntime", "tvm-lib": "tvm", "c-source": "c"}[fmt]
    return {
        "id": vid,
        "sha256": hashlib.sha256(vid.encode()).hexdigest(),
        "size_bytes": size,
        "format": fmt,
        "precision": precision,
        "target": arch,
        "accepted": accepted,
        "reason": "agreement 0.99 >= 0.98" if accepted else "agreement 0.61 < 0.98",
        "metrics": {"accuracy": acc, "agreement": acc + 0.02, "max_abs_diff": 0.01, "latency_ms_p50": latency,
                    "latency_ms_p95": None if latency is None else latency * 1.2, "threads": 1,
                    "memory_bytes": size * 2},
        "requirements": {"arch": [arch], "min_ram_mb": 33, "runtime": runtime, "operators": list(ops)},
    }


FP32 = variant("fp32")
INT8 = variant("int8-static", precision="int8", acc=0.972, latency=1.6, size=100_000,
               ops=("MatMul", "Add", "QuantizeLinear", "DequantizeLinear", "Softmax"))
PRUNED = variant("pruned50-int8", precision="int8", acc=0.95, latency=1.0, size=50_000)
TVM_ARM = variant("tvm-aarch64", fmt="tvm-lib", arch="aarch64", latency=None, size=300_000)
REJECTED = variant("int4", precision="int4", acc=0.6, accepted=False)
MENU = [FP32, INT8, PRUNED, TVM_ARM, REJECTED]


def sha(v: dict[str, Any]) -> str:
    return str(v["sha256"])


def test_default_policy_picks_the_most_accurate_variant_the_device_can_run() -> None:
    choice = choose(MENU, PC, SelectionPolicy(), PHONE)
    assert choice.variant["id"] == "fp32"
    assert set(choice.scores) == {"fp32", "int8-static", "pruned50-int8"}, "hard-filtered variants are not scored"
    assert "no context rule applied" in choice.reason and "objective accuracy" in choice.reason


def test_low_battery_not_charging_switches_to_the_cheaper_int8_and_says_why() -> None:
    choice = choose(MENU, PC, SelectionPolicy(), DeviceContext(battery_pct=15.0), active_sha256=sha(FP32))
    assert choice.variant["id"] == "int8-static"
    assert "battery 15% < 20% and not charging: energy weighted x10" in choice.reason
    assert "int8-static instead of fp32" in choice.reason and "less energy" in choice.reason
    assert choice.weights["energy"] == pytest.approx(1.0)


def test_plugging_the_charger_switches_back() -> None:
    choice = choose(MENU, PC, SelectionPolicy(), DeviceContext(battery_pct=15.0, charging=True),
                    active_sha256=sha(INT8), cached={sha(FP32)})
    assert choice.variant["id"] == "fp32"
    assert "but charging: no battery rule" in choice.reason


def test_mains_powered_and_hot_or_battery_saver_devices() -> None:
    assert choose(MENU, PC, SelectionPolicy(), DeviceContext()).variant["id"] == "fp32"
    hot = choose(MENU, PC, SelectionPolicy(), DeviceContext(temperature_c=78.0))
    assert hot.variant["id"] == "int8-static" and "temperature 78 °C > 70 °C" in hot.reason
    saver = choose(MENU, PC, SelectionPolicy(), DeviceContext(user_preference="battery-saver"))
    assert saver.variant["id"] == "int8-static" and "battery-saver" in saver.reason


def test_energy_rule_applies_once_and_size_is_weighted_on_a_metered_network() -> None:
    weights, rules = effective_weights(
        SelectionPolicy(), DeviceContext(battery_pct=5.0, network="metered", user_preference="battery-saver")
    )
    assert weights == {"accuracy": 1.0, "latency": 0.01, "size": pytest.approx(0.015), "energy": pytest.approx(1.0)}
    assert len(rules) == 1 and "user prefers battery-saver" in rules[0] and "size x1.5" in rules[0]


def test_metered_network_keeps_the_active_variant_when_the_gain_is_small() -> None:
    metered = DeviceContext(battery_pct=80.0, network="metered")
    kept = choose(MENU, PC, SelectionPolicy(), metered, active_sha256=sha(INT8))
    assert kept.variant["id"] == "int8-static"
    assert "metered network" in kept.reason and "(the active variant)" in kept.reason
    # the same switch happens on Wi-Fi, or on a metered link once the blob is cached
    assert choose(MENU, PC, SelectionPolicy(), PHONE, active_sha256=sha(INT8)).variant["id"] == "fp32"
    assert choose(MENU, PC, SelectionPolicy(), metered, active_sha256=sha(INT8),
                  cached={sha(FP32)}).variant["id"] == "fp32"
    much_better = variant("fp32", acc=0.99)
    switch = choose([much_better, INT8], PC, SelectionPolicy(), metered, active_sha256=sha(INT8))
    assert switch.variant["id"] == "fp32", "a large gain is worth the download"


def test_offline_only_picks_cached_variants_and_keeps_the_active_one() -> None:
    offline = DeviceContext(battery_pct=80.0, network="offline")
    choice = choose(MENU, PC, SelectionPolicy(), offline, cached={sha(INT8)})
    assert choice.variant["id"] == "int8-static" and set(choice.scores) == {"int8-static"}
    assert "offline: only cached variants (1 of 3 that fit)" in choice.reason
    kept = choose(MENU, PC, SelectionPolicy(), DeviceContext(battery_pct=10.0, network="offline"),
                  active_sha256=sha(FP32))
    assert kept.variant["id"] == "fp32", "nothing cached: the active model keeps serving despite the battery"
    with pytest.raises(NoCompatibleVariantError, match="not cached and the device is offline"):
        choose(MENU, PC, SelectionPolicy(), offline)


def test_performance_preference_weights_latency_over_energy() -> None:
    fast = variant("fast-fp32", latency=1.0, size=100_000)
    frugal = variant("frugal-int8", precision="int8", latency=1.2, size=100_000)
    policy = SelectionPolicy(weights={"latency": 1.0, "energy": 1.0})
    assert choose([fast, frugal], PC, policy, PHONE).variant["id"] == "frugal-int8"
    choice = choose([fast, frugal], PC, policy, DeviceContext(battery_pct=80.0, user_preference="performance"))
    assert choice.variant["id"] == "fast-fp32"
    assert choice.weights == {"accuracy": 0.0, "latency": 2.0, "size": 0.0, "energy": 0.5}
    assert "user prefers performance: latency weighted x2, energy x0.5" in choice.reason


def test_max_accuracy_drop_keeps_a_too_inaccurate_variant_out() -> None:
    assert choose(MENU, PC, SelectionPolicy(objective="energy"), PHONE).variant["id"] == "pruned50-int8"
    choice = choose(MENU, PC, SelectionPolicy(objective="energy", max_accuracy_drop=0.01), PHONE)
    assert choice.variant["id"] == "int8-static" and "pruned50-int8" not in choice.scores
    assert "max accuracy drop 0.01: left out pruned50-int8" in choice.reason


def test_exclude_skips_variants_that_failed_here_before() -> None:
    choice = choose(MENU, PC, SelectionPolicy(), PHONE, exclude={sha(FP32)})
    assert choice.variant["id"] == "int8-static" and "fp32" not in choice.scores


def test_hard_filter_failure_names_the_device_and_each_reason() -> None:
    tiny = DeviceCapabilities(name="zero", arch="armv7l", device_class="zero", ram_mb=16, model_storage_kb=64)
    with pytest.raises(NoCompatibleVariantError) as err:
        choose(MENU, tiny, SelectionPolicy(), PHONE)
    message = str(err.value)
    assert message.startswith("device zero can run no variant")
    assert "fp32: needs 33 MB RAM, device has 16" in message
    assert "int4: not accepted: agreement 0.61 < 0.98" in message
    assert "tvm-aarch64: needs runtime tvm" in message
    with pytest.raises(NoCompatibleVariantError, match="int8-static: needs operators the runtime lacks: "
                                                       "DequantizeLinear, QuantizeLinear"):
        choose([INT8], PC, SelectionPolicy(), PHONE, operators={"MatMul", "Add", "Softmax"})


def test_an_unknown_context_value_is_a_spec_error_naming_the_field() -> None:
    with pytest.raises(SpecError, match="context.network"):
        DeviceContext(network="5g")
    with pytest.raises(SpecError, match="context.user_preference"):
        DeviceContext(user_preference="turbo")


def test_choice_is_deterministic_whatever_the_menu_order_and_ties_break_on_id() -> None:
    contexts = [PHONE, DeviceContext(battery_pct=10.0), DeviceContext(network="metered", battery_pct=50.0)]
    for context in contexts:
        first = choose(MENU, PC, SelectionPolicy(), context, active_sha256=sha(FP32))
        for seed in range(5):
            shuffled = random.Random(seed).sample(MENU, len(MENU))
            again = choose(shuffled, PC, SelectionPolicy(), context, active_sha256=sha(FP32))
            assert (again.variant["id"], again.reason, dict(again.scores)) == (
                first.variant["id"], first.reason, dict(first.scores))
    twins = [variant("b"), variant("a")]
    tie: Choice = choose(twins, PC, SelectionPolicy(), PHONE)
    assert tie.variant["id"] == "a" and tie.scores["a"] == tie.scores["b"]
