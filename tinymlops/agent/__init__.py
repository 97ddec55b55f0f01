"""The device agent: trusted delivery and safe switching of variants on one device.

Modules: `trust` (signatures, downgrade and digest checks over bytes), `sessions`
(loaded runtimes shared by digest), `health` (golden-sample check before a switch),
`device` (the state machine of one device, no IO), `slots` (the on-disk A/B slots of a
standalone install) and `install` (`tinymlops agent install`).  The online agent of the
fleet simulator (`tinymlops.fleet`) drives `device.DeviceAgent` over HTTP.
"""

from tinymlops.agent.device import ActiveModel, DeviceAgent, SwitchResult
from tinymlops.agent.sessions import SessionCache

__all__ = ["ActiveModel", "DeviceAgent", "SessionCache", "SwitchResult"]
