"""The PRADA detector on synthetic queries (seeded): natural-like queries raise nothing, near copies do."""

from __future__ import annotations

import numpy as np

from tinymlops.protection.prada import ClientDetector, Monitor, PradaConfig, shapiro_w


def natural(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(0, 4, (10, 16))
    classes = rng.integers(0, 10, n)
    return (centres[classes] + rng.normal(0, 1, (n, 16))).astype(np.float32), classes


def test_natural_queries_raise_no_alarm() -> None:
    for seed in range(5):
        rng = np.random.default_rng(seed)
        monitor = Monitor()
        x, classes = natural(rng, 1000)
        for q, c in zip(x, classes, strict=True):
            assert monitor.observe("app", q, int(c), now=1.0) is None


def test_synthesised_queries_near_earlier_ones_raise_an_alarm_within_100() -> None:
    rng = np.random.default_rng(0)
    monitor = Monitor()
    seeds, classes = natural(rng, 10)
    for q, c in zip(seeds, classes, strict=True):
        monitor.observe("thief", q, int(c), now=0.0)
    asked, current = 10, seeds
    while asked < 100 and not monitor.alarmed("thief"):
        current = current + 0.05 * np.sign(rng.normal(size=current.shape)).astype(np.float32)
        for q, c in zip(current, classes, strict=True):
            asked += 1
            monitor.observe("thief", q, int(c), now=float(asked))
    alarm = monitor.alarms["thief"]
    assert alarm.since <= 100 and alarm.w < monitor.config.delta


def test_clients_and_memory_are_bounded() -> None:
    config = PradaConfig(max_clients=3, per_class=4, window=10)
    monitor = Monitor(config)
    rng = np.random.default_rng(1)
    for i in range(10):
        for _ in range(20):
            monitor.observe(f"app-{i}", rng.normal(size=8).astype(np.float32), int(rng.integers(3)), now=0.0)
    assert monitor.clients() == ["app-7", "app-8", "app-9"]
    detector = ClientDetector(config)
    for _ in range(100):
        detector.observe(rng.normal(size=8).astype(np.float32), 0)
    assert len(detector.distances) == 10 and config.memory_bytes(classes=3, features=8) == 3 * 4 * 9 * 4 + 80


def test_a_repeated_query_is_no_alarm_by_itself() -> None:
    detector = ClientDetector(PradaConfig(window=10, stride=1))
    q = np.ones(4, np.float32)
    ws = [detector.observe(q, 0) for _ in range(30)]
    assert [w for w in ws if w is not None] == [1.0] * 20


def test_the_fast_shapiro_path_computes_scipys_statistic() -> None:
    from scipy.stats import shapiro

    rng = np.random.default_rng(3)
    for sample in (rng.normal(size=50), rng.exponential(size=50), np.r_[np.zeros(40), rng.random(10)]):
        assert shapiro_w(sample) == float(shapiro(sample).statistic)
    assert shapiro_w(np.full(50, 0.25)) == 1.0
