"""The gateway: the HTTP service edge devices talk to.

It serves the artifact store (plans, menus, blobs) to devices, takes their
reports, aggregates them per fleet for the operator's summary endpoint and
exports Prometheus metrics.  `reports` and `fleetstate` are pure; `metrics`
wraps prometheus-client; `app` is the aiohttp edge (`create_app`, `Gateway`).
Nothing is imported here, so the pure modules load without aiohttp.
"""
