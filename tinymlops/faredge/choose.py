"""Which microcontroller variant of a menu an MCU gets (pure): one that fits, the fewest instructions first."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tinymlops.devices import DeviceCapabilities
from tinymlops.errors import NoCompatibleVariantError
from tinymlops.selection.filters import rejection_reason

MCU_FORMAT = "c-source"


def choose_mcu_variant(menu: Mapping[str, Any], mcu: DeviceCapabilities) -> dict[str, Any]:
    """The accepted microcontroller variant that fits `mcu`, with the fewest instructions per inference.

    NoCompatibleVariantError names every microcontroller variant and why it does not fit (the flash and
    RAM it needs against what the device has), or says the menu has none.
    """
    candidates = [v for v in menu.get("variants", []) if v.get("format") == MCU_FORMAT]
    if not candidates:
        raise NoCompatibleVariantError(f"device {mcu.name}: the menu has no microcontroller variant "
                                       f"({MCU_FORMAT}; build with --targets cortex-m4)")
    refusals = {str(v["id"]): rejection_reason(v, mcu) for v in candidates}
    fitting = [v for v in candidates if refusals[str(v["id"])] is None]
    if not fitting:
        why = "; ".join(f"{vid}: {reason}" for vid, reason in refusals.items())
        raise NoCompatibleVariantError(f"device {mcu.name}: no microcontroller variant fits ({why})")
    chosen: Mapping[str, Any] = min(fitting, key=lambda v: int(v.get("metrics", {}).get("instructions", 0)))
    return dict(chosen)
