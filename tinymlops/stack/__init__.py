"""The embedded local stack: a Kubernetes API emulator (and friends) on loopback."""

from tinymlops.extras import require_extra

# Its modules import these; checked once here so a missing one names the extra to install.
require_extra("stack", __name__)
