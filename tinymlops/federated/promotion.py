"""Whether a federated model ships: the promotion rule over held-out predictions of the base and the new model.

The new model must gain at least `min_accuracy_gain` overall and may lose at most `max_class_loss` on any device
class's slice of the held-out data (DATA.npz's optional `group` array names each sample's device class), so a
model that helps the fleet on average but hurts one class of devices is rejected, naming the class.

A class's slice may be small: with 70 images, three are four points, and which three a model gets right moves
with the training machine's BLAS.  With `significance` set, a loss rejects only if it is also significant at that
level by McNemar's exact test: of the images where the two models disagree on being right, under "equally good"
the base is the one right with probability 1/2, so the p-value is the binomial tail of the base's count.
"""

from __future__ import annotations

import math
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
    # class: {"base": accuracy, "new": accuracy, "images": n, "lossPValue": McNemar's one-sided p of the new
    # model being worse there}
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "reason": self.reason, "baseAccuracy": round(self.base_accuracy, 4),
                "accuracy": round(self.accuracy, 4),
                "perClass": {name: {k: round(v, 4) for k, v in values.items()}
                             for name, values in self.per_class.items()}}


def loss_p_value(base_only: int, new_only: int) -> float:
    """McNemar's exact one-sided p-value that the new model is worse: P(X >= base_only) for X ~ B(n, 1/2), where
    `base_only` images only the base model gets right and `new_only` only the new one (n their sum)."""
    n = base_only + new_only
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, k) for k in range(base_only, n + 1)) / 2 ** n)


def decide(rule: Promotion, y: NDArray[np.int64], base: NDArray[np.int64], new: NDArray[np.int64],
           groups: NDArray[np.str_] | None = None) -> Verdict:
    """The verdict on `new` predictions against `base` ones for the labels `y`."""
    base_accuracy, accuracy = float(np.mean(base == y)), float(np.mean(new == y))
    per_class = {}
    if groups is not None:
        for name in sorted(set(groups.tolist())):
            mine = groups == name
            base_right, new_right = base[mine] == y[mine], new[mine] == y[mine]
            per_class[str(name)] = {
                "base": float(np.mean(base_right)), "new": float(np.mean(new_right)), "images": int(mine.sum()),
                "lossPValue": loss_p_value(int(np.sum(base_right & ~new_right)), int(np.sum(new_right & ~base_right)))}
    gain = accuracy - base_accuracy
    if gain < rule.min_accuracy_gain:
        return Verdict(False, f"accuracy {accuracy:.2%} gains {gain * 100:+.2f} points over the base model's "
                              f"{base_accuracy:.2%}, less than the {rule.min_accuracy_gain * 100:.2f} the rule asks",
                       base_accuracy, accuracy, per_class)
    over = {name: v["base"] - v["new"] for name, v in per_class.items() if v["base"] - v["new"] > rule.max_class_loss}
    losses = {name: loss for name, loss in over.items()
              if rule.significance is None or per_class[name]["lossPValue"] < rule.significance}
    if losses:
        worst = max(losses, key=lambda name: losses[name])
        shown = per_class[worst]
        evidence = "" if rule.significance is None else (
            f", significant at {rule.significance:g} (p {shown['lossPValue']:.3g} on {shown['images']:.0f} images)")
        return Verdict(False, f"device class {worst} would lose {losses[worst] * 100:.2f} points of accuracy "
                              f"({shown['base']:.2%} -> {shown['new']:.2%}), more than the "
                              f"{rule.max_class_loss * 100:.2f} the rule allows{evidence}", base_accuracy, accuracy,
                       per_class)
    noise = "".join(f"; {name} -{loss * 100:.2f} points: p {per_class[name]['lossPValue']:.3g} on "
                    f"{per_class[name]['images']:.0f} images" for name, loss in sorted(over.items()))
    limit = f"{rule.max_class_loss * 100:.2f}" + (f" significantly (at {rule.significance:g})" if over else "")
    return Verdict(True, f"accuracy {base_accuracy:.2%} -> {accuracy:.2%} ({gain * 100:+.2f} points), no device class "
                         f"loses more than {limit}{noise}", base_accuracy, accuracy, per_class)
