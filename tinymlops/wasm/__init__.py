"""WebAssembly pre/post-processing modules that travel with the model in the signed menu.

`modules.py` (no wasmtime needed) turns module bytes into menu entries and checks
them against a menu; `sandbox.py` runs one module in wasmtime, imports refused,
memory capped and fuel metered; `pipeline.py` wraps a loaded variant so that
pre → model → post runs as one runner, in the factory and on the device alike.
The ABI is in DESIGN §6 and docs/wasm.md.  wasmtime is the `wasm` extra.
"""
