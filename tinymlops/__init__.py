"""TinyMLOps core: what the operator, the pipelines and the devices share.

The core imports none of `tinymlops_operator` or `tinymlops_pipelines`, and its
modules are layered from the entry points down to `errors` (both enforced by
import-linter, see `.importlinter`); only the entry points (`tinymlops.cli`,
`tinymlops.commands`, `tinymlops.stack`) tie the pieces together.
"""

__version__ = "0.1.0"

API_GROUP = "tinymlops.io"
API_VERSION = "v1alpha1"
