"""The fleet simulator: many device agents in one process, each running real inferences.

`profiles` (heterogeneous device classes, pure), `kubeedge` (the KubeEdge Device
objects that represent them, pure), `latency` (the latency a simulated device
reports, pure), `traces` (battery, network and outage timelines), `twins` (the
KubeEdge twin a device reports), `shift` (input shifts a device class's
workload can undergo, pure) and `simulator` (N devices, each a
`tinymlops.agent` online agent: the simulator schedules them, plays their
context and injects faults, and they decide everything else).  The agent
imports nothing from here.
"""

from tinymlops.fleet.profiles import DEVICE_CLASSES, DeviceClass, make_fleet
from tinymlops.fleet.simulator import FleetSimulator

__all__ = ["DEVICE_CLASSES", "DeviceClass", "FleetSimulator", "make_fleet"]
