"""What a Kubernetes API server does to a custom resource before storing it, done in-process.

`schema` defaults and validates an object against its CRD's OpenAPI v3 schema, and says
why a schema would be refused as non-structural; `cel` evaluates the schema's
`x-kubernetes-validations` rules.  Their users: the embedded API emulator
(`tinymlops.stack.emulator`, which answers 422 Invalid with these messages) and the tests
that hold `crds/`, the chart's copies and `examples/` to what a real cluster accepts.
Pruning unknown fields is the emulator's own step (`stack/emulator/schemas.py`).
"""
