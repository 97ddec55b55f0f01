"""Whether a federated model ships: the promotion rule over held-out predictions of the base and the new model.

The new model must gain at least `min_accuracy_gain` overall and may lose at most `max_class_loss` on any device
class's slice of the held-out data (DATA.npz's optional `group` array names each sample's device class), so a
model that helps the fleet on average but hurts one class of devices is rejected, naming the class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from tinymlops.federated.spec import Promotion


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    base_accuracy: float
    accuracy: float
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # class: {"base": a, "new": b}

    def as_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reason": self.reason, "baseAccuracy": round(self.base_accuracy, 4),
                "accuracy": round(self.accuracy, 4),
                "perClass": {name: {k: round(v, 4) for k, v in values.items()}
                             for name, values in self.per_class.items()}}


def decide(rule: Promotion, y: NDArray[np.int64], base: NDArray[np.int64], new: NDArray[np.int64],
           groups: NDArray[np.str_] | None = None) -> Verdict:
    """The verdict on `new` predictions against `base` ones for the labels `y`."""
    base_accuracy, accuracy = float(np.mean(base == y)), float(np.mean(new == y))
    per_class = {}
    if groups is not None:
        for name in sorted(set(groups.tolist())):
            mine = groups == name
            per_class[str(name)] = {"base": float(np.mean(base[mine] == y[mine])),
                                    "new": float(np.mean(new[mine] == y[mine]))}
    gain = accuracy - base_accuracy
    if gain < rule.min_accuracy_gain:
        return Verdict(False, f"accuracy {accuracy:.2%} gains {gain * 100:+.2f} points over the base model's "
                              f"{base_accuracy:.2%}, less than the {rule.min_accuracy_gain * 100:.2f} the rule asks",
                       base_accuracy, accuracy, per_class)
    losses = {name: v["base"] - v["new"] for name, v in per_class.items() if v["base"] - v["new"] > rule.max_class_loss}
    if losses:
        worst = max(losses, key=lambda name: losses[name])
        return Verdict(False, f"device class {worst} would lose {losses[worst] * 100:.2f} points of accuracy "
                              f"({per_class[worst]['base']:.2%} -> {per_class[worst]['new']:.2%}), more than the "
                              f"{rule.max_class_loss * 100:.2f} the rule allows", base_accuracy, accuracy, per_class)
    return Verdict(True, f"accuracy {base_accuracy:.2%} -> {accuracy:.2%} ({gain * 100:+.2f} points), no device class "
                         f"loses more than {rule.max_class_loss * 100:.2f}", base_accuracy, accuracy, per_class)
