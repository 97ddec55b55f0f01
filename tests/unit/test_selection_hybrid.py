"""Local, split at k, or cascade: the choice for each context, and why."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tinymlops.errors import SpecError
from tinymlops.selection.hybrid import Costs, HybridPolicy, Link, SplitCost, choose_mode, costs

# A heavy model on a slow device: 40 ms locally; a split after a 2 ms head sends 4 KB to a 1 ms tail.
HEAVY = Costs(device_ms=40.0, fits=True, splits=(SplitCost(2, 2.0, 1.0, 4096), SplitCost(5, 30.0, 0.2, 40)),
              input_bytes=256, cloud_ms=3.0, low_confidence_share=0.1)
LAN = Link(bandwidth_bps=100e6, rtt_ms=2.0)
SLOW = Link(bandwidth_bps=64e3, rtt_ms=300.0)
CLOUD = HybridPolicy(cloud_variant="big", threshold=0.8, max_ms=100.0)


def test_no_link_means_local() -> None:
    for link, why in ((Link(100e6, 2.0, reachable=False), "server unreachable"), (Link(), "not measured yet")):
        choice = choose_mode(HEAVY, link, HybridPolicy())
        assert (choice.mode, choice.k) == ("local", None) and why in choice.reason


def test_a_fast_link_takes_the_cheapest_split_a_slow_one_stays_local() -> None:
    fast = choose_mode(HEAVY, LAN, HybridPolicy())
    assert (fast.mode, fast.k) == ("split", 2)
    assert fast.expected_ms == pytest.approx(2.0 + 2.0 + 8000 * 4096 / 100e6 + 1.0)
    assert fast.bytes_per_inference == 4096 and "split@2: fastest" in fast.reason and "local 40 ms" in fast.reason
    slow = choose_mode(HEAVY, SLOW, HybridPolicy())
    assert slow.mode == "local" and slow.expected_ms == 40.0


def test_a_small_model_stays_local_even_on_a_fast_link() -> None:
    small = Costs(device_ms=0.1, fits=True, splits=(SplitCost(1, 0.05, 0.01, 256),))
    assert choose_mode(small, LAN, HybridPolicy()).mode == "local"


def test_a_model_that_does_not_fit_is_split_whatever_the_link() -> None:
    tight = Costs(device_ms=40.0, fits=False, splits=HEAVY.splits)
    choice = choose_mode(tight, SLOW, HybridPolicy())
    assert choice.mode == "split" and "local" not in choice.expected
    assert "does not fit" in choose_mode(Costs(40.0, fits=False), LAN, HybridPolicy()).reason


def test_a_cascade_needs_the_policy_the_consent_and_the_latency_budget() -> None:
    assert choose_mode(HEAVY, LAN, HybridPolicy(), consent_inputs=True).mode == "split"  # no cloud variant named
    refused = choose_mode(HEAVY, LAN, CLOUD, consent_inputs=False)
    assert refused.mode == "split" and "consent" in refused.reason
    cascade = choose_mode(HEAVY, LAN, CLOUD, consent_inputs=True)
    assert cascade.mode == "cascade"
    assert cascade.expected_ms == pytest.approx(40.0 + 0.1 * (2.0 + 8000 * 256 / 100e6 + 3.0))
    assert "10% of answers" in cascade.reason and cascade.bytes_per_inference == pytest.approx(25.6)
    # on the slow link: 40 + 0.1 * (300 + 32 + 3) = 73.5 ms, over a 60 ms budget
    over = choose_mode(HEAVY, SLOW, HybridPolicy("big", 0.8, 60.0), consent_inputs=True)
    assert over.mode == "local" and "73.5 ms expected exceeds 60 ms" in over.reason


def test_the_battery_saver_prefers_less_device_compute_within_the_slack() -> None:
    saver = HybridPolicy(battery_saver_pct=20)
    near = Costs(device_ms=10.0, fits=True, splits=(SplitCost(1, 1.0, 1.0, 10_000),))
    link = Link(bandwidth_bps=20e6, rtt_ms=8.0)  # split: 1 + 8 + 4 + 1 = 14 ms, local 10 ms
    assert choose_mode(near, link, saver, battery_pct=50, charging=False).mode == "local"
    assert choose_mode(near, link, saver, battery_pct=10, charging=True).mode == "local"
    low = choose_mode(near, link, saver, battery_pct=10, charging=False)
    assert low.mode == "split" and "battery 10 % < 20 %" in low.reason


def menu_variant(**changes: Any) -> dict[str, Any]:
    variant = {"metrics": {"latency_ms_p50": 0.5}, "requirements": {"min_ram_mb": 64},
               "health_check": {"inputs": [[0.0] * 64]},
               "split": {"points": [
                   {"k": 1, "exact": True, "head_ms_p50": 0.1, "tail_ms_p50": 0.4, "bytes_fp32": 1024,
                    "bytes_int8": 264, "int8_agreement": 1.0},
                   {"k": 2, "exact": False, "head_ms_p50": 0.2, "tail_ms_p50": 0.3, "bytes_fp32": 40,
                    "bytes_int8": 18, "int8_agreement": 1.0},
                   {"k": 3, "exact": True, "head_ms_p50": 0.3, "tail_ms_p50": 0.2, "bytes_fp32": 512,
                    "bytes_int8": 136, "int8_agreement": 0.99}]}}
    variant.update(changes)
    return variant


def test_costs_from_the_menu_scale_the_device_side_and_skip_inexact_points() -> None:
    cost = costs(menu_variant(), slowdown=10.0, ram_mb=512, policy=HybridPolicy(int8_transfer=True))
    assert cost.device_ms == 5.0 and cost.fits and cost.input_bytes == 256
    assert [(s.k, s.head_ms, s.tail_ms, s.bytes) for s in cost.splits] == [(1, 1.0, 0.4, 264), (3, 3.0, 0.2, 512)]
    assert not costs(menu_variant(), slowdown=1.0, ram_mb=32, policy=HybridPolicy()).fits
    no_latency = costs(menu_variant(metrics={}), slowdown=1.0, ram_mb=512, policy=HybridPolicy())
    assert math.isinf(no_latency.device_ms)


@pytest.mark.parametrize(("hybrid", "field"), [
    ({"cloud": {"variant": "big", "threshold": 1.5}}, "threshold"),
    ({"cloud": {"variant": "big", "maxMs": 0}}, "maxMs"),
    ({"batterySaverPct": 120}, "batterySaverPct"),
])
def test_a_bad_policy_names_its_field(hybrid: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError, match=f"policy.hybrid.*{field}"):
        HybridPolicy.from_policy({"hybrid": hybrid})


def test_the_policy_reads_the_fleet_object() -> None:
    policy = HybridPolicy.from_policy({"hybrid": {"cloud": {"variant": "big", "threshold": 0.7, "maxMs": 50},
                                                  "int8Transfer": True, "batterySaverPct": 15}})
    assert policy == HybridPolicy("big", 0.7, 50.0, True, 15.0)
    assert HybridPolicy.from_policy({}) == HybridPolicy()
