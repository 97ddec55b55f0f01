"""On-device personalisation: a device fits its model's last layer on its own labelled data and keeps it.

The signed variant stays the trust anchor: it is verified, health-checked and loaded as always, and a
personalised device runs it unchanged up to its last layer's input (`graph.expose`), then applies its own head
(`head.Head`) instead of the base's last layer.  The head is fitted and judged here (`decide.personalise`,
pure numpy, no torch), used only where it beats the base on held-out local data, and never leaves the device:
its report says `personalised: true/false`, a flag.  `tinymlops/agent/personalise.py` does the device's IO.
"""

from tinymlops.personalise.decide import Outcome, check_data, check_reproduces, personalise
from tinymlops.personalise.graph import LastLayer, expose, find_last_layer
from tinymlops.personalise.head import Head
from tinymlops.personalise.policy import PersonalisationPolicy
from tinymlops.personalise.runner import Personalised

__all__ = ["Head", "LastLayer", "Outcome", "PersonalisationPolicy", "Personalised", "check_data",
           "check_reproduces", "expose", "find_last_layer", "personalise"]
