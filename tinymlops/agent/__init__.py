"""The device agent: trusted delivery and safe switching of variants on one device.

Modules: `trust` (signatures, downgrade and digest checks over bytes), `sessions`
(loaded runtimes shared by digest), `health` (golden-sample check before a switch),
`device` (the state machine of one device, no IO: it decides what to fetch and
builds its report), `telemetry` (counters, upload policy, outbox), `online` (the
loop that polls the gateway and moves bytes for `device`), `edgenode` (the edge
node's cache between devices and the gateway), `slots` (the on-disk A/B slots of a
standalone install) and `install` (`tinymlops agent install`).  The fleet simulator
(`tinymlops.fleet`) runs many online agents; nothing here imports it.
"""

from tinymlops.agent.device import ActiveModel, DeviceAgent, SwitchResult
from tinymlops.agent.sessions import SessionCache

__all__ = ["ActiveModel", "DeviceAgent", "SessionCache", "SwitchResult"]
