"""Far-edge devices: microcontrollers behind an edge node that does the trusted part for them.

A microcontroller cannot run the Python agent.  Its edge node (the KubeEdge
mapper's role, `node.py`) verifies the signed menu and the bundle's digest,
picks the variant whose measured flash and RAM fit the MCU's labels
(`choose.py`), builds the firmware, flashes it after a boot check on the
menu's golden inputs, runs inferences and relays each MCU's report.  The
firmware itself checks its image's SHA-256 before it runs anything.
"""
