"""Kubernetes API-server semantics we need without a cluster: CRD structural schemas and CEL rules.

`schema` defaults and validates an object against its CRD's OpenAPI v3 schema as the API
server does; `cel` evaluates the schema's `x-kubernetes-validations`.  The embedded API
emulator and `tinymlops validate` use them.
"""
