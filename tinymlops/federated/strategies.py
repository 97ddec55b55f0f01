"""The Flower strategy a TrainingSpec asks for: the named strategy, wrapped for DP, wrapped by the guard."""

from __future__ import annotations

from flwr.serverapp import strategy as flower

from tinymlops.federated.guard import GuardedStrategy
from tinymlops.federated.spec import TrainingSpec


def build_strategy(spec: TrainingSpec, available: int) -> GuardedStrategy:
    """Clients evaluate nothing (the server scores the aggregate on held-out data each round), so only
    training samples clients: `spec.fraction` of `available`, at least `spec.min_clients`."""
    cls = getattr(flower, spec.strategy)
    inner: flower.Strategy = cls(fraction_train=spec.fraction, fraction_evaluate=0.0,
                                 min_train_nodes=spec.min_clients, min_evaluate_nodes=0,
                                 min_available_nodes=spec.min_clients, **spec.flower_params())
    if spec.privacy is not None:
        # Clients clip their own update (fixedclipping_mod on the ClientApp) before it leaves the device; the
        # server adds the noise, calibrated to the number of clients a round samples.
        inner = flower.DifferentialPrivacyClientSideFixedClipping(
            inner, noise_multiplier=spec.privacy.noise_multiplier, clipping_norm=spec.privacy.clip_norm,
            num_sampled_clients=spec.clients_per_round(available))
    return GuardedStrategy(inner, spec.max_update_norm)
