"""Operator settings, read once from the environment at start-up (fail fast, clear message)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from tinymlops.errors import ConfigError
from tinymlops.freshness import MIN_TTL_S, PLAN_TTL_S


@dataclass(frozen=True)
class Settings:
    store_root: Path
    signing_key: Path
    gateway_url: str | None
    kfp_host: str | None
    pipeline_root: Path
    cache_dir: Path
    prometheus_url: str | None = None  # where rollout analysis queries run unless a fleet names its own
    metrics_port: int | None = None  # the operator's own /metrics; None: not served
    peering: str | None = None  # ClusterKopfPeering shared by the replicas; None: standalone (one replica only)
    peering_priority: int | None = None  # None: by start time, the oldest replica acts (see identity.py)
    gateway_ca: Path | None = None  # the CA an HTTPS gateway's certificate is checked against; None: the system's
    plan_ttl_s: float = PLAN_TTL_S  # how long a signed plan stays current, unless a fleet sets planExpirySeconds
    federated_data_dir: Path | None = None  # simulated devices' own data, <device>.npz (embedded stack only)
    federated_cpus: int = 2  # cores Flower's simulation engine may use for a training's simulated devices
    superlink_host: str = "127.0.0.1"  # the IPv4 address a spec.runtime SuperLink listens on and devices dial

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ConfigError(f"{name} is not set (see docs/operations.md, 'Operator configuration')")
            return value

        store_root = Path(required("TINYMLOPS_STORE"))
        signing_key = Path(required("TINYMLOPS_SIGNING_KEY"))
        if not signing_key.is_file():
            raise ConfigError(f"TINYMLOPS_SIGNING_KEY={signing_key} is not a readable file")
        state = Path(env.get("TINYMLOPS_STATE_DIR") or store_root.parent / "operator-state")
        return cls(
            store_root=store_root,
            signing_key=signing_key,
            gateway_url=(env.get("TINYMLOPS_GATEWAY_URL") or "").rstrip("/") or None,
            kfp_host=env.get("TINYMLOPS_KFP_HOST") or None,
            pipeline_root=Path(env.get("TINYMLOPS_PIPELINE_ROOT") or state / "pipeline-root"),
            cache_dir=Path(env.get("TINYMLOPS_CACHE_DIR") or state / "variant-cache"),
            prometheus_url=(env.get("TINYMLOPS_PROMETHEUS_URL") or "").rstrip("/") or None,
            metrics_port=_port(env.get("TINYMLOPS_METRICS_PORT")),
            peering=env.get("TINYMLOPS_PEERING", "").strip() or None,
            peering_priority=_int("TINYMLOPS_PEERING_PRIORITY", env.get("TINYMLOPS_PEERING_PRIORITY")),
            gateway_ca=_file("TINYMLOPS_GATEWAY_CA", env.get("TINYMLOPS_GATEWAY_CA")),
            plan_ttl_s=_plan_ttl(env.get("TINYMLOPS_PLAN_TTL_SECONDS")),
            federated_data_dir=Path(env["TINYMLOPS_FEDERATED_DATA_DIR"]) if env.get("TINYMLOPS_FEDERATED_DATA_DIR")
            else None,
            federated_cpus=_int("TINYMLOPS_FEDERATED_CPUS", env.get("TINYMLOPS_FEDERATED_CPUS")) or 2,
            superlink_host=_ipv4("TINYMLOPS_SUPERLINK_HOST", env.get("TINYMLOPS_SUPERLINK_HOST")),
        )


def _ipv4(name: str, value: str | None) -> str:
    """An address to listen on that is also the one devices dial (and the certificate names): not 0.0.0.0."""
    if value is None or not value.strip():
        return "127.0.0.1"
    try:
        address = ipaddress.IPv4Address(value.strip())
    except ValueError as exc:
        raise ConfigError(f"{name}={value!r} is not an IPv4 address") from exc
    if address.is_unspecified:
        raise ConfigError(f"{name}=0.0.0.0: give the address devices dial (it is also the certificate's name)")
    return str(address)


def _plan_ttl(value: str | None) -> float:
    ttl = _int("TINYMLOPS_PLAN_TTL_SECONDS", value)
    if ttl is None:
        return PLAN_TTL_S
    if ttl < MIN_TTL_S:
        raise ConfigError(f"TINYMLOPS_PLAN_TTL_SECONDS={ttl} is shorter than {MIN_TTL_S:.0f} s, twice the "
                          "tolerance devices allow for clock skew")
    return float(ttl)


def _file(name: str, value: str | None) -> Path | None:
    if value is None or not value.strip():
        return None
    path = Path(value.strip())
    if not path.is_file():
        raise ConfigError(f"{name}={value!r} is not a readable file")
    return path


def _int(name: str, value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None


def _port(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(f"TINYMLOPS_METRICS_PORT={value!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"TINYMLOPS_METRICS_PORT={value!r} is not a port number (1..65535)")
    return port
