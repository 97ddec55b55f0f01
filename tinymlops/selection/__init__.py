"""Which variant a device runs: decided the same way on the device and in the operator's prediction (pure).

A core package: the device agent, the operator and the fleet simulator import it; it imports none of
them, and only `tinymlops.devices` and `tinymlops.errors` from the rest of the core.

- `filters`: what a device can run at all (accepted, runtime, architecture, RAM, model storage).
- `policy`: the fleet's `SelectionPolicy`, read from the signed plan.
- `choice`: `choose` among what passes, from the policy and the device's `DeviceContext`.
- `energy`: the per-device-class latency and energy model the choice (and the simulator) use.
- `hybrid`: where one inference runs (local, split at point k, cascade to a cloud variant), from the link.

The names below are the package's interface; the constants behind them stay in their modules.
"""

from tinymlops.selection.choice import Choice, DeviceContext, choose, effective_weights
from tinymlops.selection.energy import TargetModel, device_latency_ms, energy_mj, host_latency_ms, target_model
from tinymlops.selection.filters import rejection_reason
from tinymlops.selection.policy import SelectionPolicy

__all__ = [
    "Choice",
    "DeviceContext",
    "SelectionPolicy",
    "TargetModel",
    "choose",
    "device_latency_ms",
    "effective_weights",
    "energy_mj",
    "host_latency_ms",
    "rejection_reason",
    "target_model",
]
