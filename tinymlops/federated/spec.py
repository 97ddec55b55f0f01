"""A FederatedTraining's spec as plain data: read once, every field checked, every error naming its field.

The CRD schema (crds/federatedtrainings.tinymlops.io.yaml) rejects most bad specs at the API server; this is the
same contract for specs that never pass one (the simulator, the benchmark, a test) and for what a schema cannot
say (a strategy's parameters, clients per round against the fleet's size).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tinymlops.errors import SpecError

# Flower's strategies by the name a spec gives, and the camelCase parameters each takes (to Flower's keyword).
STRATEGY_PARAMS: dict[str, dict[str, str]] = {
    "FedAvg": {},
    "FedProx": {"proximalMu": "proximal_mu"},
    "FedAdam": {"eta": "eta", "etaL": "eta_l", "beta1": "beta_1", "beta2": "beta_2", "tau": "tau"},
    "FedYogi": {"eta": "eta", "etaL": "eta_l", "beta1": "beta_1", "beta2": "beta_2", "tau": "tau"},
    "FedMedian": {},
    "FedTrimmedAvg": {"beta": "beta"},
    "Krum": {"numMaliciousNodes": "num_malicious_nodes"},
    "FedAvgM": {"serverLearningRate": "server_learning_rate", "serverMomentum": "server_momentum"},
}
SCHEDULES = ("Once", "OnDrift")
# SecAgg+ shows the server only the sum of the updates: a strategy that must see each one cannot run under it.
NEEDS_EACH_UPDATE = {"FedMedian": "takes the coordinate-wise median of the individual updates",
                     "FedTrimmedAvg": "drops the largest and smallest individual updates",
                     "Krum": "compares the individual updates with each other"}
RUNTIMES = ("Simulation", "SuperLink")  # Flower's simulation engine, or a SuperLink real devices connect to


@dataclass(frozen=True)
class Privacy:
    clip_norm: float
    noise_multiplier: float
    delta: float


@dataclass(frozen=True)
class SecureAggregation:
    """Flower's SecAgg+ parameters: a number <= 1 is a fraction (of the round's clients for `shares`, of the
    shares for `reconstruction_threshold`), a larger one a count, as SecAggPlusWorkflow reads them."""

    shares: float | int = 0.2  # how many of the round's clients each client masks with and secret-shares to
    reconstruction_threshold: float | int = 0.6  # shares that recover a dropped client's masks
    timeout_s: float = 300.0  # a client that has not answered one protocol stage by then counts as dropped

    def as_dict(self) -> dict[str, Any]:
        return {"shares": self.shares, "reconstructionThreshold": self.reconstruction_threshold,
                "timeoutSeconds": self.timeout_s}


@dataclass(frozen=True)
class Promotion:
    data_uri: str | None  # held-out data (DATA.npz); None: the EdgeModel's own data
    min_accuracy_gain: float  # points of accuracy (0.01 = one point) the new model must gain overall
    max_class_loss: float  # accuracy the new model may lose on any device class's held-out slice
    # None: a class loss beyond max_class_loss rejects as measured. A level (0.05): only when it is significant
    # at that level too (McNemar's exact test on the class's images), so that a few images do not decide.
    significance: float | None = None


@dataclass(frozen=True)
class TrainingSpec:
    model: str
    fleet: str
    fleet_selector: Mapping[str, Any] | None = None
    rounds: int = 10
    fraction: float = 0.1
    min_clients: int = 2
    local_epochs: int = 1
    learning_rate: float = 0.05
    batch_size: int = 16
    strategy: str = "FedAvg"
    strategy_params: Mapping[str, float] = field(default_factory=dict)
    privacy: Privacy | None = None
    secure_aggregation: SecureAggregation | None = None  # None: Flower sees each update (and the guard does)
    max_update_norm: float = 100.0  # an update (new - global) longer than this (L2) is dropped, never averaged
    schedule: str = "Once"
    wait_for_clients_s: float = 60.0
    promotion: Promotion = Promotion(None, 0.0, 0.02)
    runtime: str = "Simulation"

    def flower_params(self) -> dict[str, float]:
        """The strategy's parameters under Flower's keyword names."""
        names = STRATEGY_PARAMS[self.strategy]
        return {names[key]: value for key, value in self.strategy_params.items()}

    def clients_per_round(self, available: int) -> int:
        """How many clients a round samples out of `available`, as Flower's strategies compute it."""
        return max(int(available * self.fraction), self.min_clients)


def _number(spec: Mapping[str, Any], path: str, default: float, *, low: float, high: float = float("inf"),
            integer: bool = False, open_low: bool = False) -> Any:
    value: Any = spec
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise SpecError(f"spec.{path}: expected {'an integer' if integer else 'a number'}, got {value!r}")
    if value < low or (open_low and value == low) or value > high:
        bound = f"{'>' if open_low else '>='} {low}" + (f" and <= {high}" if high != float("inf") else "")
        raise SpecError(f"spec.{path}: must be {bound}, got {value}")
    return int(value) if integer else float(value)


def _optional_number(spec: Mapping[str, Any], path: str, *, low: float, high: float) -> float | None:
    """A number in (low, high], or None when the field is absent."""
    value = _number(spec, path, float("nan"), low=low, high=high, open_low=True)
    return None if value != value else float(value)  # NaN: the field is absent


def _reference(spec: Mapping[str, Any], name: str) -> str:
    ref = spec.get(name)
    if not isinstance(ref, Mapping) or not isinstance(ref.get("name"), str) or not ref["name"]:
        raise SpecError(f"spec.{name}.name: the {'EdgeModel' if name == 'model' else 'DeviceFleet'} to use is missing")
    return str(ref["name"])


def _strategy(spec: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    strategy = spec.get("strategy") or {}
    name = strategy.get("name", "FedAvg")
    if name not in STRATEGY_PARAMS:
        raise SpecError(f"spec.strategy.name: {name!r} is not one of {', '.join(STRATEGY_PARAMS)}")
    params = dict(strategy.get("params") or {})
    for key, value in params.items():
        if key not in STRATEGY_PARAMS[name]:
            known = ", ".join(STRATEGY_PARAMS[name]) or "none"
            raise SpecError(f"spec.strategy.params.{key}: {name} takes no such parameter (it takes: {known})")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"spec.strategy.params.{key}: expected a number, got {value!r}")
    if name == "FedTrimmedAvg" and not 0 <= params.get("beta", 0.2) < 0.5:
        raise SpecError(f"spec.strategy.params.beta: must be in [0, 0.5), got {params['beta']}")
    return name, params


def _share_count(value: Any, field_name: str, *, smallest: int) -> float | int:
    """A fraction in (0, 1] (1 is all) or an integer count of at least `smallest`, as SecAggPlusWorkflow takes."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise SpecError(f"spec.secureAggregation.{field_name}: expected a fraction in (0, 1] or a count, got {value!r}")
    if value <= 1:
        return float(value)
    if value != int(value) or value < smallest:
        raise SpecError(f"spec.secureAggregation.{field_name}: above 1 it is a count, an integer of at least "
                        f"{smallest}, got {value}")
    return int(value)


def _secure_aggregation(spec: Mapping[str, Any], strategy: str) -> SecureAggregation | None:
    """`true`/`false`, or {enabled, shares, reconstructionThreshold, timeoutSeconds} (enabled defaults to true)."""
    value = spec.get("secureAggregation")
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise SpecError(f"spec.secureAggregation: expected true, false or an object, got {value!r}")
    unknown = sorted(set(value) - {"enabled", "shares", "reconstructionThreshold", "timeoutSeconds"})
    if unknown:
        raise SpecError(f"spec.secureAggregation.{unknown[0]}: no such field (enabled, shares, "
                        "reconstructionThreshold, timeoutSeconds)")
    enabled = value.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SpecError(f"spec.secureAggregation.enabled: expected true or false, got {enabled!r}")
    if not enabled:
        return None
    if strategy in NEEDS_EACH_UPDATE:
        raise SpecError(f"spec.secureAggregation: {strategy} {NEEDS_EACH_UPDATE[strategy]}, "
                        "and SecAgg+ shows the server only their sum; use FedAvg, FedProx, FedAdam or "
                        "FedYogi with secure aggregation")
    default = SecureAggregation()
    shares = _share_count(value.get("shares", default.shares), "shares", smallest=3)
    threshold = _share_count(value.get("reconstructionThreshold", default.reconstruction_threshold),
                             "reconstructionThreshold", smallest=2)
    # Fewer than half the shares would let a server that tells some neighbours a client dropped and others it did
    # not collect both of that client's secrets, and so unmask its update.
    if isinstance(threshold, float) and threshold <= 0.5:
        raise SpecError(f"spec.secureAggregation.reconstructionThreshold: must be more than half of the shares "
                        f"(a fraction above 0.5), got {threshold}")
    if isinstance(threshold, int):
        if not isinstance(shares, int):
            raise SpecError("spec.secureAggregation.reconstructionThreshold: a count needs spec.secureAggregation."
                            f"shares as a count too (got shares {shares}); give a fraction of the shares instead")
        if not shares / 2 < threshold < shares:
            raise SpecError(f"spec.secureAggregation.reconstructionThreshold: a count must be more than half of "
                            f"the {shares} shares and fewer than all of them, got {threshold}")
    timeout = _number(spec, "secureAggregation.timeoutSeconds", default.timeout_s, low=0, open_low=True)
    return SecureAggregation(shares, threshold, timeout)


def parse_spec(spec: Mapping[str, Any]) -> TrainingSpec:
    """The spec of a FederatedTraining as a TrainingSpec; SpecError naming the first bad field."""
    strategy, params = _strategy(spec)
    privacy = None
    if spec.get("privacy") is not None:
        privacy = Privacy(_number(spec, "privacy.clipNorm", 1.0, low=0, open_low=True),
                          _number(spec, "privacy.noiseMultiplier", 1.0, low=0),
                          _number(spec, "privacy.delta", 1e-5, low=0, high=1, open_low=True))
        if strategy not in ("FedAvg", "FedProx"):
            raise SpecError(f"spec.privacy: differential privacy averages clipped updates, which {strategy} does "
                            "not; use FedAvg or FedProx with privacy")
    schedule = spec.get("schedule", "Once")
    if schedule not in SCHEDULES:
        raise SpecError(f"spec.schedule: {schedule!r} is not one of {', '.join(SCHEDULES)}")
    secure = _secure_aggregation(spec, strategy)
    runtime = spec.get("runtime", "Simulation")
    if runtime not in RUNTIMES:
        raise SpecError(f"spec.runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if runtime == "SuperLink" and secure is not None:
        raise SpecError("spec.secureAggregation: the app a SuperLink runs (federated/deployed.py) has no SecAgg+ "
                        "workflow yet; use runtime Simulation for secure aggregation, or turn it off")
    promotion = spec.get("promotion") or {}
    data = promotion.get("data") or {}
    fleet = spec.get("fleet") or {}
    return TrainingSpec(
        model=_reference(spec, "model"), fleet=_reference(spec, "fleet"), fleet_selector=fleet.get("selector"),
        rounds=_number(spec, "rounds", 10, low=1, high=1000, integer=True),
        fraction=_number(spec, "clients.fraction", 0.1, low=0, high=1, open_low=True),
        min_clients=_number(spec, "clients.min", 2, low=1, integer=True),
        local_epochs=_number(spec, "localEpochs", 1, low=1, high=100, integer=True),
        learning_rate=_number(spec, "learningRate", 0.05, low=0, open_low=True),
        batch_size=_number(spec, "batchSize", 16, low=1, integer=True),
        strategy=strategy, strategy_params=params, privacy=privacy, secure_aggregation=secure,
        max_update_norm=_number(spec, "maxUpdateNorm", 100.0, low=0, open_low=True), schedule=schedule,
        wait_for_clients_s=_number(spec, "waitForClientsSeconds", 60.0, low=0),
        promotion=Promotion(data.get("uri"), _number(spec, "promotion.minAccuracyGain", 0.0, low=-1, high=1),
                            _number(spec, "promotion.maxClassLoss", 0.02, low=0, high=1),
                            _optional_number(spec, "promotion.significance", low=0, high=1)),
        runtime=runtime)
