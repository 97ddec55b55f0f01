"""TinyMLOps core: what the operator, the pipelines and the devices share.

The core imports none of `tinymlops_operator` or `tinymlops_pipelines`
(enforced by import-linter, see `.importlinter`); only the entry points in
`tinymlops.cli` and `tinymlops.stack` tie the pieces together.
"""

__version__ = "0.1.0"

API_GROUP = "tinymlops.io"
API_VERSION = "v1alpha1"
