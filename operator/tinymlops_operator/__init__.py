"""The TinyMLOps kopf operator.

`main.py` only registers handlers; `handlers/` do the IO of one resource kind
each; `logic/` holds the pure decisions the unit tests call directly.
"""

from tinymlops.extras import require_extra

# Its modules import these; checked once here so a missing one names the extra to install.
require_extra("operator", __name__)
