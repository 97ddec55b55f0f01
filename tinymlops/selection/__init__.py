"""Which variant a device runs, decided the same way on the device and in the operator's prediction (pure).

`filters` (what a device can run at all: runtime, architecture, RAM, storage), `context`
(the choice among what passes, from the device's context and the fleet's policy) and
`energy` (the per-device-class latency and energy model both use).
"""
