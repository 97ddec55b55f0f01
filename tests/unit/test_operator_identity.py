"""The operator's kopf identity (finalizer, events, annotations) and its peering settings."""

from __future__ import annotations

from pathlib import Path

import kopf
import pytest

from tinymlops.errors import ConfigError
from tinymlops_operator import identity
from tinymlops_operator.config import Settings


def test_kopf_defaults_are_replaced_by_the_projects_names() -> None:
    settings = kopf.OperatorSettings()
    identity.configure(settings, peering=None, priority=None, instance="pod-1")
    assert settings.persistence.finalizer == "tinymlops.io/operator"
    assert (settings.posting.reporting_component, settings.posting.reporting_instance) == ("tinymlops-operator",
                                                                                          "pod-1")
    assert settings.posting.event_name_prefix == "tinymlops-operator-"
    progress = settings.persistence.progress_storage
    assert isinstance(progress, kopf.AnnotationsProgressStorage) and progress.prefix == "tinymlops.io"
    assert settings.peering.standalone  # without a peering name: one replica, no peering objects needed


def test_peering_is_mandatory_and_the_oldest_replica_ranks_highest() -> None:
    settings = kopf.OperatorSettings()
    identity.configure(settings, peering="tinymlops", priority=None, instance="pod-1")
    assert (settings.peering.name, settings.peering.mandatory, settings.peering.standalone) == (
        "tinymlops", True, False)
    assert identity.start_priority(1_000_000_000) > identity.start_priority(1_000_001_000)  # started 1 µs later
    assert identity.start_priority() < 0  # any explicit priority >= 0 outranks every replica
    identity.configure(settings, peering="tinymlops", priority=7, instance="laptop")
    assert settings.peering.priority == 7


def test_peering_settings_come_from_the_environment(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("k")
    env = {"TINYMLOPS_STORE": str(tmp_path), "TINYMLOPS_SIGNING_KEY": str(key)}
    assert (Settings.from_env(env).peering, Settings.from_env(env).peering_priority) == (None, None)
    config = Settings.from_env({**env, "TINYMLOPS_PEERING": "tinymlops", "TINYMLOPS_PEERING_PRIORITY": "5"})
    assert (config.peering, config.peering_priority) == ("tinymlops", 5)
    with pytest.raises(ConfigError, match="TINYMLOPS_PEERING_PRIORITY"):
        Settings.from_env({**env, "TINYMLOPS_PEERING_PRIORITY": "high"})
