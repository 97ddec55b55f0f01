"""The fleet simulator: many device agents in one process, each running real inferences.

`profiles` (heterogeneous device classes, pure), `kubeedge` (the KubeEdge Device
objects that represent them, pure), `online` (one device's HTTP loop around
`tinymlops.agent.DeviceAgent`) and `simulator` (N of them, sharing loaded
sessions and one report uplink).
"""

from tinymlops.fleet.profiles import DEVICE_CLASSES, DeviceClass, make_fleet
from tinymlops.fleet.simulator import FleetSimulator

__all__ = ["DEVICE_CLASSES", "DeviceClass", "FleetSimulator", "make_fleet"]
